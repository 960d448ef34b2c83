package pool

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestSharedRead: opens of one snapshot while its catalog read is in flight
// take that read's answer (one read for all of them); another snapshot's
// open reads on its own; a caller whose context ends stops waiting at once
// while the others still get the answer; a failed read fails every caller
// that shared it, and the next open reads again.
func TestSharedRead(t *testing.T) {
	p := &Pool{ctx: context.Background()}
	release := make(chan struct{})
	started := make(chan string, 16)
	read := func(key string, rev int64, err error) func(context.Context) (openRead, error) {
		return func(context.Context) (openRead, error) {
			started <- key
			<-release
			return openRead{rev: rev}, err
		}
	}
	const n = 8
	var wg sync.WaitGroup
	got := make([]openRead, n)
	errs := make([]error, n)
	wg.Add(1)
	go func() {
		defer wg.Done()
		got[0], errs[0] = p.sharedRead(context.Background(), "fn", read("fn", 42, nil))
	}()
	if k := <-started; k != "fn" {
		t.Fatalf("read %q started", k)
	}
	var joining sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Add(1)
		joining.Add(1)
		go func() {
			defer wg.Done()
			joining.Done()
			got[i], errs[i] = p.sharedRead(context.Background(), "fn", read("fn", 7, nil))
		}()
	}
	joining.Wait()
	// Another snapshot is not held by fn's read.
	other := make(chan error, 1)
	go func() {
		_, err := p.sharedRead(context.Background(), "other", func(context.Context) (openRead, error) { return openRead{rev: 1}, nil })
		other <- err
	}()
	if err := <-other; err != nil {
		t.Fatal(err)
	}
	// A caller that gives up returns at once, before the read ends.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := p.sharedRead(ctx, "fn", read("fn", 9, nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a caller whose context ended: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // the joiners are a call away from the in-flight read
	close(release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || got[i].rev != 42 {
			t.Fatalf("caller %d: %+v, %v: want the in-flight read's revision 42", i, got[i], errs[i])
		}
	}
	select {
	case k := <-started:
		t.Fatalf("a second read of %q ran while the first was in flight", k)
	default:
	}
	if r := p.Counters.OpenReads.Load(); r != 2 {
		t.Fatalf("%d reads counted, want 2 (fn's and other's)", r)
	}
	// A failed read fails those who shared it; the next open reads again.
	fail := errors.New("etcd down")
	release = make(chan struct{})
	close(release)
	if _, err := p.sharedRead(context.Background(), "fn", read("fn", 0, fail)); !errors.Is(err, fail) {
		t.Fatalf("failed read: %v", err)
	}
	<-started
	if r, err := p.sharedRead(context.Background(), "fn", read("fn", 43, nil)); err != nil || r.rev != 43 {
		t.Fatalf("the read after a failure: %+v, %v", r, err)
	}
}
