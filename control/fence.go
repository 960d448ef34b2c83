package control

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Token is ownership of a resource (for example a pod's CXL region) with
// its fencing token: the etcd revision at which ownership was taken. Tokens
// only grow, so a stale owner is recognisable by a smaller token.
type Token struct {
	Resource string
	Holder   string
	Rev      int64
	Lease    clientv3.LeaseID
	key      string
	reg      *Registration
}

// Value returns the fencing token as written into CXL descriptors.
func (t *Token) Value() uint64 { return uint64(t.Rev) }

func (t *Token) cmp() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(t.key), "=", t.Rev)
}

// Acquire takes ownership of resource for holder, waiting while someone
// else holds it (until ctx is done). Ownership lasts while the returned
// token's lease is kept alive (ttlSeconds) and ends with Release.
func (p *Plane) Acquire(ctx context.Context, resource, holder string, ttlSeconds int64) (*Token, error) {
	if strings.ContainsAny(resource, "\x00") || resource == "" {
		return nil, fmt.Errorf("invalid resource %q", resource)
	}
	if ttlSeconds <= 0 {
		ttlSeconds = 5
	}
	key := prefixOwner + resource
	for {
		octx, ocancel := p.op(ctx)
		l, err := p.Client.Grant(octx, ttlSeconds)
		if err != nil {
			ocancel()
			return nil, p.fail("lease for "+resource, err)
		}
		r, err := p.Client.Txn(octx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, holder, clientv3.WithLease(l.ID))).
			Else(clientv3.OpGet(key)).Commit()
		ocancel()
		if err != nil {
			p.revokeLater(l.ID)
			return nil, p.fail("acquire "+resource, err)
		}
		if r.Succeeded {
			kctx, cancel := context.WithCancel(context.Background())
			ch, err := p.Client.KeepAlive(kctx, l.ID)
			if err != nil {
				cancel()
				return nil, err
			}
			// Ownership is never re-created: a lost lease stays lost.
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range ch {
				}
			}()
			return &Token{Resource: resource, Holder: holder, Rev: r.Header.Revision, Lease: l.ID, key: key,
				reg: &Registration{lease: l.ID, cancel: cancel, done: done, p: p, key: key}}, nil
		}
		p.revokeLater(l.ID)
		// Someone holds it: wait for the key to go away.
		cur := r.Responses[0].GetResponseRange()
		rev := int64(0)
		if cur != nil && len(cur.Kvs) > 0 {
			rev = cur.Kvs[0].ModRevision
		}
		wctx, cancel := context.WithCancel(ctx)
		wch := p.Client.Watch(wctx, key, clientv3.WithRev(rev+1))
	wait:
		for {
			select {
			case <-ctx.Done():
				cancel()
				return nil, fmt.Errorf("acquiring %s: %w", resource, ctx.Err())
			case wr, ok := <-wch:
				if !ok {
					break wait
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypeDelete {
						break wait
					}
				}
			}
		}
		cancel()
	}
}

// Release gives ownership up.
func (p *Plane) Release(ctx context.Context, t *Token) error {
	return t.reg.Close(ctx)
}

// Valid reports whether t still holds its resource.
func (p *Plane) Valid(ctx context.Context, t *Token) (bool, error) { return p.fenceValid(ctx, t) }

func (p *Plane) fenceValid(ctx context.Context, t *Token) (bool, error) {
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(ctx, t.key)
	if err != nil {
		return false, p.fail("check ownership of "+t.Resource, err)
	}
	return len(r.Kvs) == 1 && r.Kvs[0].CreateRevision == t.Rev, nil
}

// revokeLater revokes a lease that is no longer needed, bounded by the
// plane's timeout (an unreachable etcd lets it expire by itself).
func (p *Plane) revokeLater(id clientv3.LeaseID) {
	ctx, cancel := p.op(context.Background())
	defer cancel()
	p.Client.Revoke(ctx, id)
}
