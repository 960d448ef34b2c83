package memnode

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/rdma/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Authorization per identity. With a Catalog (the node watches the
// cluster catalog in the control plane) a client may
//
//   - read (or stat: digests fingerprint pages) a segment that a published
//     snapshot lists, one it stored itself, or any segment during
//     Config.Grace after it was stored (the catalog entry is written after
//     its segments);
//   - delete a segment it stored, or one no published snapshot lists on
//     this node (garbage collection after `pool rm` by another host, of a
//     dead host's leftovers, or of a copy moved elsewhere);
//   - store new segments (they are immutable: a put of other bytes under a
//     stored ID is refused for everyone), list segments and ask for usage.
//
// Anything else is refused with wire.CodeForbidden, counted in
// aquifer_memnode_authz_decisions_total{op,decision="refused"} and logged
// (a warning for a connection's first refusal, debug after). A decision
// that would refuse first makes sure the node's view of the catalog is not
// older than the request (Catalog.Refresh, at most one at a time and one
// per minRefresh): a snapshot just published or just removed is never
// judged on a watch that lags. While the catalog holds entries that list
// no segments (published before entries listed them) nothing can be
// judged, and the node allows what it would otherwise refuse, counting it
// as decision="incomplete-catalog".
//
// Without a Catalog every admitted client may read and delete everything,
// as before; the node says so at start.

// Catalog is the node's view of the published snapshots' segments
// (control.SegmentIndex implements it).
type Catalog interface {
	// Lookup says whether a published snapshot lists segment id, and
	// whether one lists it on this node; complete is false while some
	// entries list no segments.
	Lookup(id uint64) (listed, here, complete bool)
	// Refresh re-reads the whole catalog; afterwards Lookup answers from a
	// view at least as new as the call.
	Refresh(ctx context.Context) error
}

// DefaultGrace is how long after a put any client may read the segment.
const DefaultGrace = 30 * time.Second

const (
	minRefresh     = 100 * time.Millisecond
	refreshTimeout = 2 * time.Second
)

// decisions, as metric labels
const (
	decOpen = iota
	decWriter
	decGrace
	decReferenced
	decUnreferenced
	decIncomplete
	decRefused
	nDecisions
)

var decisionNames = [nDecisions]string{"open", "writer", "grace", "referenced", "unreferenced", "incomplete-catalog", "refused"}

type authz struct {
	cat   Catalog
	grace time.Duration
	read  [nDecisions]prometheus.Counter
	del   [nDecisions]prometheus.Counter
	refs  prometheus.Counter

	mu        sync.Mutex
	running   chan struct{}
	lastStart time.Time // start of the last finished refresh
	lastErr   error
}

func (n *Node) initAuthz() {
	a := &n.authz
	a.cat, a.grace = n.cfg.Catalog, n.cfg.Grace
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "authz_decisions_total",
		Help: "Authorization decisions on reads (per batch) and deletes, by why they were allowed or refused (open: no catalog configured)."},
		[]string{"op", "decision"})
	for d := range nDecisions {
		a.read[d] = vec.WithLabelValues("read", decisionNames[d])
		a.del[d] = vec.WithLabelValues("delete", decisionNames[d])
	}
	a.refs = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "catalog_refreshes_total",
		Help: "Re-reads of the whole catalog made before refusing a request (the watch may lag behind a publish or a removal)."})
	n.reg.MustRegister(vec, a.refs)
}

// fresh makes sure the catalog view was read after t.
func (a *authz) fresh(t time.Time) error {
	for {
		a.mu.Lock()
		if !a.lastStart.Before(t) {
			err := a.lastErr
			a.mu.Unlock()
			return err
		}
		if ch := a.running; ch != nil {
			a.mu.Unlock()
			<-ch
			continue
		}
		ch := make(chan struct{})
		a.running = ch
		wait := minRefresh - time.Since(a.lastStart)
		a.mu.Unlock()
		if wait > 0 {
			time.Sleep(wait)
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), refreshTimeout)
		err := a.cat.Refresh(ctx)
		cancel()
		a.refs.Inc()
		a.mu.Lock()
		a.lastStart, a.lastErr, a.running = start, err, nil
		a.mu.Unlock()
		close(ch)
	}
}

// decide judges op ("read" or "delete") of segment m by identity who;
// it returns the decision and, for a refusal, the message.
func (cs *connState) decide(op string, m SegmentMeta, received time.Time) (int, string) {
	a := &cs.n.authz
	if a.cat == nil {
		return decOpen, ""
	}
	if m.Writer != "" && m.Writer == cs.who {
		return decWriter, ""
	}
	if op == "read" && time.Since(m.PutAt) < a.grace {
		return decGrace, ""
	}
	judge := func() (int, bool) {
		listed, here, complete := a.cat.Lookup(m.ID)
		switch {
		case op == "read" && listed:
			return decReferenced, true
		case op == "delete" && !here && complete:
			return decUnreferenced, true
		case !here && !complete:
			return decIncomplete, true // an entry without a list may name it
		}
		return decRefused, false
	}
	if d, ok := judge(); ok {
		return d, ""
	}
	ferr := a.fresh(received)
	if d, ok := judge(); ok {
		return d, ""
	}
	writer := m.Writer
	if writer == "" {
		writer = "(not recorded)"
	}
	var msg string
	if op == "read" {
		msg = fmt.Sprintf("segment %016x is not listed by any published snapshot in the cluster catalog, and it was stored by %s, not by %s: only its writer may read an unpublished segment", m.ID, writer, cs.who)
	} else {
		msg = fmt.Sprintf("segment %016x is a copy a published snapshot lists on this node, stored by %s, not by %s: only its writer may delete it while the catalog lists it here (remove the snapshot, or move the copy, first)", m.ID, writer, cs.who)
	}
	if ferr != nil {
		msg += fmt.Sprintf(" (the catalog could not be re-read: %v)", ferr)
	}
	return decRefused, msg
}

// allow applies decide and answers a refusal; it reports whether op may
// proceed.
func (cs *connState) allow(id uint64, op string, m SegmentMeta) bool {
	a := &cs.n.authz
	d, msg := cs.decide(op, m, cs.received)
	if op == "read" {
		a.read[d].Inc()
	} else {
		a.del[d].Inc()
	}
	if d != decRefused {
		return true
	}
	log := cs.n.log.Debug
	if !cs.refusedOnce {
		cs.refusedOnce = true
		log = cs.n.log.Warn
	}
	log("refused "+op+": not authorized", "remote", cs.remote, "identity", cs.who, "segment", fmt.Sprintf("%016x", m.ID), "writer", m.Writer)
	cs.refuse(id, wire.CodeForbidden, msg)
	return false
}

// usageFlags reports the node's authorization mode.
func (n *Node) usageFlags() uint32 {
	if n.authz.cat == nil {
		return 0
	}
	f := wire.UsageAuthorizing
	if _, _, complete := n.authz.cat.Lookup(0); !complete {
		f |= wire.UsageCatalogIncomplete
	}
	return f
}

// referenced is the list flags of segment id.
func (n *Node) referenced(id uint64) uint16 {
	if n.authz.cat == nil {
		return 0
	}
	var f uint16
	listed, here, _ := n.authz.cat.Lookup(id)
	if listed {
		f |= wire.EntryReferenced
	}
	if here {
		f |= wire.EntryReferencedHere
	}
	return f
}
