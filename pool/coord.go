package pool

import (
	"context"
	"errors"
	"fmt"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/cxl/pod"
)

// coordinator adapts the control plane's pod state (etcd) to the CXL
// coherence protocol's Coordinator: the protocol's types on one side, the
// control plane's on the other, errors mapped between them.
type coordinator struct{ s *control.PodState }

var _ pod.Coordinator = coordinator{}

func toPod(l control.PodLease) pod.Lease { return pod.Lease{Host: l.Host, ID: l.ID} }
func fromPod(l pod.Lease) control.PodLease {
	return control.PodLease{Host: l.Host, ID: l.ID}
}
func refToPod(r control.ExtentRef) pod.Ref {
	return pod.Ref{Desc: r.Desc, Gen: r.Gen, Token: r.Token, Len: r.Len}
}
func refFromPod(r pod.Ref) control.ExtentRef {
	return control.ExtentRef{Desc: r.Desc, Gen: r.Gen, Token: r.Token, Len: r.Len}
}

// podErr maps control-plane outcomes to the protocol's errors.
func podErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, control.ErrFenced):
		return pod.ErrFenced
	case errors.Is(err, control.ErrOwned):
		return pod.ErrOwned
	case errors.Is(err, control.ErrNotFound):
		return pod.ErrNotFound
	}
	return err
}

func (c coordinator) Join(ctx context.Context, host int) (pod.Lease, error) {
	l, err := c.s.Join(ctx, host)
	return toPod(l), err
}

func (c coordinator) Leave(ctx context.Context, l pod.Lease) error {
	return podErr(c.s.Leave(ctx, fromPod(l)))
}

func (c coordinator) Live(ctx context.Context) ([]pod.Lease, error) {
	ls, err := c.s.Live(ctx)
	out := make([]pod.Lease, len(ls))
	for i, l := range ls {
		out[i] = toPod(l)
	}
	return out, err
}

func (c coordinator) AcquireChunk(ctx context.Context, l pod.Lease, chunk int) (uint64, error) {
	t, err := c.s.AcquireChunk(ctx, fromPod(l), chunk)
	return t, podErr(err)
}

func (c coordinator) ReleaseChunk(ctx context.Context, l pod.Lease, chunk int, token uint64) error {
	return podErr(c.s.ReleaseChunk(ctx, fromPod(l), chunk, token))
}

func (c coordinator) Publish(ctx context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) (pod.Ref, bool, error) {
	prev, ok, err := c.s.Publish(ctx, fromPod(l), chunk, token, key, refFromPod(ref))
	return refToPod(prev), ok, podErr(err)
}

func (c coordinator) Unpublish(ctx context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) error {
	return podErr(c.s.Unpublish(ctx, fromPod(l), chunk, token, key, refFromPod(ref)))
}

func (c coordinator) Lookup(ctx context.Context, key string) (pod.Ref, error) {
	r, err := c.s.Lookup(ctx, key)
	return refToPod(r), podErr(err)
}

// NewCoordinator returns the CXL protocol's Coordinator over a pod's state
// in the control plane.
func NewCoordinator(s *control.PodState) pod.Coordinator { return coordinator{s} }

// memberCoordinator is the Coordinator of one pod member's slots: Join
// hands out the slot leases the member was allocated (it never takes a
// slot of its own), Leave gives one slot up.
type memberCoordinator struct {
	coordinator
	m *control.PodMember
}

// NewMemberCoordinator returns the Coordinator for the slots of member m.
func NewMemberCoordinator(s *control.PodState, m *control.PodMember) pod.Coordinator {
	return memberCoordinator{coordinator{s}, m}
}

func (c memberCoordinator) Join(ctx context.Context, host int) (pod.Lease, error) {
	l, ok := c.m.Lease(host)
	if !ok {
		return pod.Lease{}, fmt.Errorf("host slot %d is not one of member %s's slots %v: %w", host, c.m.Name, c.m.Slots, pod.ErrFenced)
	}
	return toPod(l), nil
}

func (c memberCoordinator) Leave(ctx context.Context, l pod.Lease) error {
	return podErr(c.s.LeaveSlot(ctx, fromPod(l)))
}
