package podtest

import (
	"context"
	"errors"
	"net"
	"net/rpc"
	"strings"

	"github.com/aquifer-pool/aquifer/cxl/pod"
)

// The control plane over net/rpc, so several processes of one machine can
// share a MemCoordinator (the multi-process pod test and local
// experiments). Production uses etcd (package pool); this is not a
// replacement for it: the server is a single point of failure.

// RPCArgs and RPCReply carry every pod.Coordinator call.
type RPCArgs struct {
	Lease       pod.Lease
	Host, Chunk int
	Token       uint64
	Key         string
	Ref         pod.Ref
}

type RPCReply struct {
	Lease    pod.Lease
	Leases   []pod.Lease
	Token    uint64
	Ref      pod.Ref
	Replaced bool
}

// CoordinatorServer exposes a pod.Coordinator over net/rpc.
type CoordinatorServer struct{ c pod.Coordinator }

func (s *CoordinatorServer) Join(a *RPCArgs, r *RPCReply) (err error) {
	r.Lease, err = s.c.Join(context.Background(), a.Host)
	return
}
func (s *CoordinatorServer) Leave(a *RPCArgs, r *RPCReply) error {
	return s.c.Leave(context.Background(), a.Lease)
}
func (s *CoordinatorServer) Live(a *RPCArgs, r *RPCReply) (err error) {
	r.Leases, err = s.c.Live(context.Background())
	return
}
func (s *CoordinatorServer) AcquireChunk(a *RPCArgs, r *RPCReply) (err error) {
	r.Token, err = s.c.AcquireChunk(context.Background(), a.Lease, a.Chunk)
	return
}
func (s *CoordinatorServer) ReleaseChunk(a *RPCArgs, r *RPCReply) error {
	return s.c.ReleaseChunk(context.Background(), a.Lease, a.Chunk, a.Token)
}
func (s *CoordinatorServer) Publish(a *RPCArgs, r *RPCReply) (err error) {
	r.Ref, r.Replaced, err = s.c.Publish(context.Background(), a.Lease, a.Chunk, a.Token, a.Key, a.Ref)
	return
}
func (s *CoordinatorServer) Unpublish(a *RPCArgs, r *RPCReply) error {
	return s.c.Unpublish(context.Background(), a.Lease, a.Chunk, a.Token, a.Key, a.Ref)
}
func (s *CoordinatorServer) Lookup(a *RPCArgs, r *RPCReply) (err error) {
	r.Ref, err = s.c.Lookup(context.Background(), a.Key)
	return
}

// ServeCoordinator serves c on l until l is closed.
func ServeCoordinator(l net.Listener, c pod.Coordinator) error {
	srv := rpc.NewServer()
	if err := srv.RegisterName("Coordinator", &CoordinatorServer{c: c}); err != nil {
		return err
	}
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go srv.ServeConn(conn)
	}
}

// RPCCoordinator is a pod.Coordinator client for ServeCoordinator.
type RPCCoordinator struct{ c *rpc.Client }

// DialCoordinator connects to a ServeCoordinator listener.
func DialCoordinator(network, addr string) (*RPCCoordinator, error) {
	c, err := rpc.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	return &RPCCoordinator{c: c}, nil
}

// Close closes the connection.
func (r *RPCCoordinator) Close() error { return r.c.Close() }

func (r *RPCCoordinator) call(method string, a *RPCArgs) (*RPCReply, error) {
	var rep RPCReply
	if err := r.c.Call("Coordinator."+method, a, &rep); err != nil {
		// net/rpc transports errors as strings: restore the sentinels.
		for _, e := range []error{pod.ErrFenced, pod.ErrOwned, pod.ErrNotFound} {
			if strings.Contains(err.Error(), e.Error()) {
				return nil, errors.Join(e, err)
			}
		}
		return nil, err
	}
	return &rep, nil
}

func (r *RPCCoordinator) Join(_ context.Context, host int) (pod.Lease, error) {
	rep, err := r.call("Join", &RPCArgs{Host: host})
	if err != nil {
		return pod.Lease{}, err
	}
	return rep.Lease, nil
}
func (r *RPCCoordinator) Leave(_ context.Context, l pod.Lease) error {
	_, err := r.call("Leave", &RPCArgs{Lease: l})
	return err
}
func (r *RPCCoordinator) Live(context.Context) ([]pod.Lease, error) {
	rep, err := r.call("Live", &RPCArgs{})
	if err != nil {
		return nil, err
	}
	return rep.Leases, nil
}
func (r *RPCCoordinator) AcquireChunk(_ context.Context, l pod.Lease, chunk int) (uint64, error) {
	rep, err := r.call("AcquireChunk", &RPCArgs{Lease: l, Chunk: chunk})
	if err != nil {
		return 0, err
	}
	return rep.Token, nil
}
func (r *RPCCoordinator) ReleaseChunk(_ context.Context, l pod.Lease, chunk int, token uint64) error {
	_, err := r.call("ReleaseChunk", &RPCArgs{Lease: l, Chunk: chunk, Token: token})
	return err
}
func (r *RPCCoordinator) Publish(_ context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) (pod.Ref, bool, error) {
	rep, err := r.call("Publish", &RPCArgs{Lease: l, Chunk: chunk, Token: token, Key: key, Ref: ref})
	if err != nil {
		return pod.Ref{}, false, err
	}
	return rep.Ref, rep.Replaced, nil
}
func (r *RPCCoordinator) Unpublish(_ context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) error {
	_, err := r.call("Unpublish", &RPCArgs{Lease: l, Chunk: chunk, Token: token, Key: key, Ref: ref})
	return err
}
func (r *RPCCoordinator) Lookup(_ context.Context, key string) (pod.Ref, error) {
	rep, err := r.call("Lookup", &RPCArgs{Key: key})
	if err != nil {
		return pod.Ref{}, err
	}
	return rep.Ref, nil
}
