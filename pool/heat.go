package pool

import (
	"context"
	"time"

	"github.com/aquifer-pool/aquifer/control"
)

// Heat is written in batches. A restore's heat (control.PodState.Restored:
// a read and a compare-and-swap write in etcd, a raft round and a WAL
// fsync) used to be written when the VM became ready, on the cores its
// guest had just been given: measured side by side, leaving it out made
// the restores' end-to-end 0.84x [0.79, 0.95] (docs/evaluation.md, cut 14).
// Restored now counts the restore here; heatDelay after the first restore
// counted, one write per snapshot adds all the restores counted meanwhile.
// Every decision that reads heats (placing, demoting, promoting) writes
// what is pending first, so this host's own restores are never missed by
// them; another host's reach etcd at most heatDelay late.

// heatDelay is how long restores are counted before their heat is written.
const heatDelay = 250 * time.Millisecond

// countRestore counts one restore of name for the next heat write.
func (p *Pool) countRestore(name string) {
	p.heatMu.Lock()
	first := len(p.heatPending) == 0
	p.heatPending[name]++
	p.heatMu.Unlock()
	if first {
		select {
		case p.heatKick <- struct{}{}:
		default:
		}
	}
}

// heatLoop writes counted restores heatDelay after the first of a batch,
// and what is left when the pool stops.
func (p *Pool) heatLoop(ctx context.Context) {
	defer p.bg.Done()
	final := func() {
		fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.flushHeat(fctx, false)
	}
	for {
		select {
		case <-p.heatKick:
		case <-ctx.Done():
			final()
			return
		}
		select {
		case <-time.After(heatDelay):
			p.flushHeat(ctx, true)
		case <-ctx.Done():
			final()
			return
		}
	}
}

// flushHeat writes the heat of every restore counted so far, one write per
// snapshot, and (promote) lets a snapshot that became hot enough be
// promoted.
func (p *Pool) flushHeat(ctx context.Context, promote bool) {
	p.heatFlushMu.Lock()
	defer p.heatFlushMu.Unlock()
	p.heatMu.Lock()
	pending := p.heatPending
	p.heatPending = map[string]int{}
	p.heatMu.Unlock()
	for name, n := range pending {
		h, err := p.cfg.PodState.RestoredN(ctx, name, time.Now(), n)
		if err != nil {
			p.log.Warn("recording restores", "snapshot", name, "restores", n, "err", err)
			continue
		}
		if promote {
			p.maybePromote(name, h)
		}
	}
}

// heats returns the pod's heat records, this host's pending restores
// written first.
func (p *Pool) heats(ctx context.Context) (map[string]control.Heat, error) {
	p.flushHeat(ctx, true)
	return p.cfg.PodState.Heats(ctx)
}
