package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestLoadOnce: opens that miss the cache for one snapshot version while
// its load is in flight take that load's entry (one load for all of them);
// another version loads on its own; a waiter whose context ends returns at
// once; a load that failed on its caller's context is retried by a waiter;
// any other failure is every waiter's, and the next open loads again. It
// runs in a synctest bubble: synctest.Wait returns once every caller is
// blocked, so each step starts with all of them waiting.
func TestLoadOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &Pool{}
		var loads atomic.Int32
		release := make(chan struct{})
		load := func(e *entry, err error) func() (*entry, error) {
			return func() (*entry, error) {
				loads.Add(1)
				<-release
				return e, err
			}
		}
		want := &entry{rev: 42}
		const n = 8
		var wg sync.WaitGroup
		got := make([]*entry, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l := load(&entry{rev: 7}, nil)
				if i == 0 {
					l = load(want, nil)
				}
				got[i], errs[i] = p.loadOnce(context.Background(), "fn\x0042", l)
			}()
			if i == 0 {
				synctest.Wait() // the first caller's load is in flight
			}
		}
		// Another version is not held by this one's load.
		other := &entry{rev: 43}
		if e, err := p.loadOnce(context.Background(), "fn\x0043", func() (*entry, error) { return other, nil }); e != other || err != nil {
			t.Fatalf("another version: %v, %v", e, err)
		}
		// A waiter that gives up returns before the load ends.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := p.loadOnce(ctx, "fn\x0042", load(nil, nil)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a waiter whose context ended: %v", err)
		}
		synctest.Wait() // the other seven wait for the first load
		close(release)
		wg.Wait()
		for i := range n {
			if errs[i] != nil || got[i] != want {
				t.Fatalf("caller %d: %+v, %v: want the in-flight load's entry", i, got[i], errs[i])
			}
		}
		if l := loads.Load(); l != 1 {
			t.Fatalf("%d loads of one version ran, want 1", l)
		}

		// The loader's own context ended: a waiter loads instead.
		release = make(chan struct{})
		loads.Store(0)
		first := make(chan error, 1)
		go func() {
			_, err := p.loadOnce(context.Background(), "fn\x0044", load(nil, context.Canceled))
			first <- err
		}()
		synctest.Wait()
		second := make(chan *entry, 1)
		retried := &entry{rev: 44}
		go func() {
			e, _ := p.loadOnce(context.Background(), "fn\x0044", func() (*entry, error) { loads.Add(1); return retried, nil })
			second <- e
		}()
		synctest.Wait()
		close(release)
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Fatalf("the loader: %v", err)
		}
		if e := <-second; e != retried || loads.Load() != 2 {
			t.Fatalf("the waiter after the loader's context ended: %v, %d loads", e, loads.Load())
		}

		// Any other failure is the waiters' too; the next open loads again.
		release = make(chan struct{})
		loads.Store(0)
		fail := errors.New("memory nodes unreachable")
		res := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := p.loadOnce(context.Background(), "fn\x0045", load(nil, fail))
				res <- err
			}()
		}
		synctest.Wait()
		close(release)
		for range 2 {
			if err := <-res; !errors.Is(err, fail) {
				t.Fatalf("a load's failure: %v", err)
			}
		}
		if l := loads.Load(); l != 1 {
			t.Fatalf("%d loads ran for two callers of one version, want 1", l)
		}
		if e, err := p.loadOnce(context.Background(), "fn\x0045", func() (*entry, error) { return other, nil }); e != other || err != nil {
			t.Fatalf("the load after a failure: %v, %v", e, err)
		}
	})
}
