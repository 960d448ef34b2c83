package rdma

import (
	"context"
	"sync"
)

// CompletionQueue is the completion side of a Conn for backends whose
// completions are produced by another goroutine (a socket reader, a CQ
// poller): producers push completions or fail the queue, and Poll hands
// them to the Conn's consumer. The zero value is ready to use.
type CompletionQueue struct {
	mu     sync.Mutex
	q      []Completion
	err    error
	notify chan struct{}
}

func (q *CompletionQueue) wake() {
	select {
	case q.notifyCh() <- struct{}{}:
	default:
	}
}

func (q *CompletionQueue) notifyCh() chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.notify == nil {
		q.notify = make(chan struct{}, 1)
	}
	return q.notify
}

// CompleteOps completes every op with err.
func (q *CompletionQueue) CompleteOps(ops []ReadOp, err error) {
	q.mu.Lock()
	for _, op := range ops {
		q.q = append(q.q, Completion{Cookie: op.Cookie, Err: err})
	}
	q.mu.Unlock()
	q.wake()
}

// CompleteCookies completes the ops with these cookies with err.
func (q *CompletionQueue) CompleteCookies(cookies []uint64, err error) {
	q.mu.Lock()
	for _, k := range cookies {
		q.q = append(q.q, Completion{Cookie: k, Err: err})
	}
	q.mu.Unlock()
	q.wake()
}

// Fail makes Poll return err once the queued completions are drained.
func (q *CompletionQueue) Fail(err error) {
	q.mu.Lock()
	q.err = err
	q.mu.Unlock()
	q.wake()
}

// Poll waits until at least one completion is available (or ctx ends),
// fills out and returns how many it filled; after Fail and once drained,
// it returns the failure.
func (q *CompletionQueue) Poll(ctx context.Context, out []Completion) (int, error) {
	notify := q.notifyCh()
	for {
		if n, err := q.TryPoll(out); n > 0 || err != nil {
			return n, err
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// TryPoll is Poll without waiting: it fills out with the completions
// queued now, or returns the failure once drained (rdma.TryPoller).
func (q *CompletionQueue) TryPoll(out []Completion) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.q) > 0 {
		n := copy(out, q.q)
		q.q = q.q[:copy(q.q, q.q[n:])]
		return n, nil
	}
	return 0, q.err
}
