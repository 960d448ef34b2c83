package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
)

// serveOn answers the control API's GET /v1/vms on a real Unix socket with
// the statuses in order (then 200 with one VM).
func serveOn(t *testing.T, sock string, statuses ...int) *atomic.Int32 {
	t.Helper()
	var calls atomic.Int32
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Error(err) // (called from a goroutine too: no Fatal)
		return &calls
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(calls.Add(1))
		if r.URL.Path != "/v1/vms" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if n <= len(statuses) {
			code := map[int]string{400: api.CodeInvalid, 503: api.CodeUnavailable}[statuses[n-1]]
			w.WriteHeader(statuses[n-1])
			w.Write([]byte(`{"code":"` + code + `","error":"` + code + `"}`))
			return
		}
		w.Write([]byte(`[{"id":"vm1","snapshot":"fn","state":"ready"}]`))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return &calls
}

// TestWaitServing: the wait asks again while no daemon listens and while
// it answers 503, stops at once on any other error, and gives up at its
// timeout naming the last error.
func TestWaitServing(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	// Nobody listens: asked once without a timeout, until the timeout with one.
	c := New(filepath.Join(dir, "none.sock"), Options{})
	if _, err := c.WaitServing(ctx, 0); !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "no daemon at") {
		t.Fatalf("no daemon, no wait: %v", err)
	}
	if _, err := c.WaitServing(ctx, 300*time.Millisecond); !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "still no answer after 300ms") {
		t.Fatalf("no daemon, 300ms: %v", err)
	}

	// A daemon that appears while the client waits.
	sock := filepath.Join(dir, "late.sock")
	go func() {
		time.Sleep(200 * time.Millisecond)
		serveOn(t, sock)
	}()
	vms, err := New(sock, Options{}).WaitServing(ctx, time.Minute)
	if err != nil || len(vms) != 1 || vms[0].ID != "vm1" {
		t.Fatalf("late daemon: %v %+v", err, vms)
	}

	// 503 (a handoff) is asked again; 400 is not.
	sock503 := filepath.Join(dir, "503.sock")
	calls := serveOn(t, sock503, 503, 503)
	if vms, err := New(sock503, Options{}).WaitServing(ctx, time.Minute); err != nil || len(vms) != 1 || calls.Load() != 3 {
		t.Fatalf("503 twice: %v %+v after %d calls", err, vms, calls.Load())
	}
	sock400 := filepath.Join(dir, "400.sock")
	calls = serveOn(t, sock400, 400)
	if _, err := New(sock400, Options{}).WaitServing(ctx, time.Minute); !errors.Is(err, api.ErrInvalid) || calls.Load() != 1 {
		t.Fatalf("400: %v after %d calls", err, calls.Load())
	}
}
