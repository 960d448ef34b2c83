package pagerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxReadyWait bounds ?timeout= on /ready.
const maxReadyWait = 10 * time.Minute

// Handler returns the control API (package api documents it).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, d.List()) })
	mux.HandleFunc("PUT /v1/vms/{id}", func(w http.ResponseWriter, r *http.Request) {
		var req api.PrepareRequest
		if err := decode(w, r, &req); err != nil || req.Snapshot == "" {
			writeErr(w, fmt.Errorf("%w request: body must be {\"snapshot\": NAME[, \"early_resume\": BOOL]}: %v", restore.ErrInvalid, errOr(err, "no snapshot named")))
			return
		}
		vm, err := d.Prepare(r.Context(), r.PathValue("id"), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, 201, vm)
	})
	mux.HandleFunc("GET /v1/vms/{id}", func(w http.ResponseWriter, r *http.Request) {
		vm, err := d.Get(r.PathValue("id"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, 200, vm)
	})
	mux.HandleFunc("GET /v1/vms/{id}/ready", func(w http.ResponseWriter, r *http.Request) {
		timeout := 30 * time.Second
		if t := r.URL.Query().Get("timeout"); t != "" {
			v, err := time.ParseDuration(t)
			if err != nil || v <= 0 || v > maxReadyWait {
				writeErr(w, fmt.Errorf("%w timeout %q: give a duration such as 10s, at most %v", restore.ErrInvalid, t, maxReadyWait))
				return
			}
			timeout = v
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		vm, err := d.WaitReady(ctx, r.PathValue("id"))
		switch {
		case err == nil:
			writeJSON(w, 200, vm)
		case errors.Is(err, context.DeadlineExceeded):
			writeAPIErr(w, &api.Error{Code: api.CodeTimeout, Message: fmt.Sprintf("VM %q not ready after %v (state %s): has its Firecracker connected to %s?", vm.ID, timeout, vm.State, vm.Socket)})
		default:
			writeErr(w, err)
		}
	})
	mux.HandleFunc("DELETE /v1/vms/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Delete(r.PathValue("id")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(204)
	})
	cat, _ := d.cfg.Opener.(restore.Catalog)
	mux.HandleFunc("POST /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		if cat == nil {
			writeErr(w, errNoCatalog)
			return
		}
		var req api.PublishRequest
		if err := decode(w, r, &req); err != nil || req.Image == "" || req.Name == "" {
			writeErr(w, fmt.Errorf("%w request: body must be {\"image\": PATH, \"name\": NAME}: %v", restore.ErrInvalid, errOr(err, "image and name are required")))
			return
		}
		s, err := cat.Publish(r.Context(), req.Image, req.Name)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, 201, wireSnapshot(s))
	})
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		if cat == nil {
			writeErr(w, errNoCatalog)
			return
		}
		l, err := cat.List(r.Context())
		if err != nil {
			writeErr(w, err)
			return
		}
		out := make([]api.Snapshot, 0, len(l))
		for _, s := range l {
			out = append(out, wireSnapshot(s))
		}
		writeJSON(w, 200, out)
	})
	tier, _ := d.cfg.Opener.(restore.Tiering)
	for _, op := range []string{"promote", "demote"} {
		mux.HandleFunc("POST /v1/snapshots/{name}/"+op, func(w http.ResponseWriter, r *http.Request) {
			if tier == nil {
				writeErr(w, fmt.Errorf("%w: this daemon has no CXL tier to %s into or out of", restore.ErrInvalid, op))
				return
			}
			f := tier.Promote
			if op == "demote" {
				f = tier.Demote
			}
			if err := f(r.Context(), r.PathValue("name")); err != nil {
				writeErr(w, err)
				return
			}
			w.WriteHeader(204)
		})
	}
	mt, _ := d.cfg.Opener.(restore.MemTier)
	mux.HandleFunc("POST /v1/memnodes/{addr}/drain", func(w http.ResponseWriter, r *http.Request) {
		if mt == nil {
			writeErr(w, fmt.Errorf("%w: this daemon has no memory tier", restore.ErrInvalid))
			return
		}
		if err := mt.Drain(r.Context(), r.PathValue("addr")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("DELETE /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
		if cat == nil {
			writeErr(w, errNoCatalog)
			return
		}
		if err := cat.Remove(r.Context(), r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(204)
	})
	return mux
}

var errNoCatalog = fmt.Errorf("%w: this daemon serves image files (serve --images) and has no catalog to publish to; copy the image to its directory as NAME.img", restore.ErrInvalid)

func errOr(err error, s string) any {
	if err != nil {
		return err
	}
	return s
}

func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func wireSnapshot(s *restore.Info) api.Snapshot {
	return api.Snapshot{Name: s.Name, MemBytes: s.MemBytes, Pages: s.Pages, ZeroPages: s.ZeroPages, HotPages: s.HotPages,
		ColdPages: s.ColdPages, HotBytes: s.HotBytes, ColdBytes: s.ColdBytes, HotTier: s.HotTier, Published: s.Published}
}

// codeOf maps an error to its API code.
func codeOf(err error) string {
	switch {
	case errors.Is(err, restore.ErrInvalid):
		return api.CodeInvalid
	case errors.Is(err, restore.ErrNotFound), errors.Is(err, ErrNoVM):
		return api.CodeNotFound
	case errors.Is(err, restore.ErrExists), errors.Is(err, ErrVMExists):
		return api.CodeExists
	case errors.Is(err, restore.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return api.CodeUnavailable
	}
	return api.CodeInternal
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	code := codeOf(err)
	writeAPIErr(w, &api.Error{Code: code, Message: err.Error() + hint(code, err)})
}

// hint says what to do about an error a client caused, where that is
// known and the message does not already say it.
func hint(code string, err error) string {
	switch {
	case code == api.CodeNotFound && errors.Is(err, ErrNoVM):
		return " (GET /v1/vms lists this daemon's VMs)"
	case code == api.CodeExists && errors.Is(err, ErrVMExists):
		return " (DELETE /v1/vms/ID ends it; or give the new VM another id)"
	case code == api.CodeNotFound && errors.Is(err, restore.ErrNotFound):
		return " (`aquifer pool ls` lists the snapshots this daemon serves)"
	}
	return ""
}

func writeAPIErr(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, api.StatusOf(e.Code), e)
}

// Serve runs the control API on a Unix socket (mode 0600) until ctx ends.
// Only clients running as the daemon's uid (or root) are answered.
func (d *Daemon) Serve(ctx context.Context, apiSocket string) error {
	// The socket appears (mode 0600) only once it accepts connections;
	// after a handoff it is the predecessor's, already listening.
	l := d.inheritedListener("api", apiSocket)
	if l == nil {
		var err error
		if l, err = handshake.Listen(apiSocket); err != nil {
			return fmt.Errorf("the control API socket: %w", err)
		}
	}
	d.mu.Lock()
	d.apiL = l
	d.mu.Unlock()
	defer func() {
		select {
		case <-d.handedOver:
			l.Release() // the successor serves on it
		default:
			l.Close()
		}
	}()
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		if s != http.StateNew {
			return
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return
		}
		p, err := handshake.PeerOf(uc)
		if err != nil || (p.Uid != 0 && int(p.Uid) != os.Getuid()) {
			d.log.Warn("refusing control client", "pid", p.Pid, "uid", p.Uid, "err", err)
			c.Close()
		}
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-d.handedOver:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(l.UnixListener)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
