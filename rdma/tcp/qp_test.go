package tcp_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
	"github.com/aquifer-pool/aquifer/rdma/wire"
)

// fakeEndpoint stands in for rdma/verbs' node side (no RNIC here) so the
// control-path plumbing — slab exposure, addr/rkey in put answers, the
// qp-connect exchange and queue-pair release on disconnect — is tested.
type fakeEndpoint struct {
	exposed  atomic.Int32
	released atomic.Int32
	got      atomic.Pointer[wire.QPInfo]
}

func (f *fakeEndpoint) Expose(buf []byte) (uint32, error) { f.exposed.Add(1); return 0x77, nil }
func (f *fakeEndpoint) Accept(remote wire.QPInfo) (wire.QPInfo, func() error, error) {
	f.got.Store(&remote)
	return wire.QPInfo{LID: 9, QPN: 0x4242, PSN: 7}, func() error { f.released.Add(1); return nil }, nil
}

func serveInProcess(t *testing.T, cfg memnode.Config) string {
	cfg.Capacity, cfg.Secret = 16<<20, secret
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := memnode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go n.Serve(l)
	t.Cleanup(func() { l.Close(); n.Close() })
	return l.Addr().String()
}

type exchanger interface {
	ExchangeQP(context.Context, wire.QPInfo) (wire.QPInfo, error)
}

func TestQPExchangeControlPath(t *testing.T) {
	ctx := context.Background()
	tr := tcp.New(secret, "pod-a")

	// A node without RDMA refuses plainly.
	plain, err := tr.Dial(ctx, rdma.NodeID(serveInProcess(t, memnode.Config{})))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = plain.(exchanger).ExchangeQP(ctx, wire.QPInfo{QPN: 1})
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeUnsupported {
		t.Fatalf("qp-connect to a node without RDMA: %v", err)
	}

	fe := &fakeEndpoint{}
	c, err := tr.Dial(ctx, rdma.NodeID(serveInProcess(t, memnode.Config{RDMA: fe})))
	if err != nil {
		t.Fatal(err)
	}
	data := randData(3, 2*pageSize)
	ref, err := c.Write(ctx, &rdma.WriteSegment{ID: 3, PageSize: pageSize, Data: data, Digests: rdma.PageDigests(data, pageSize)})
	if err != nil {
		t.Fatal(err)
	}
	if fe.exposed.Load() != 1 || ref.RKey != 0x77 || ref.Addr == 0 || ref.Len != 2*pageSize {
		t.Fatalf("put answer lacks the RDMA location: %+v (slabs exposed %d)", ref, fe.exposed.Load())
	}
	// The address points at the segment's bytes in the node's slab (same
	// process here, so it can be checked directly).
	if got := offheap.At(uintptr(ref.Addr), 2*pageSize); string(got) != string(data) {
		t.Fatal("advertised address does not hold the segment")
	}
	remote, err := c.(exchanger).ExchangeQP(ctx, wire.QPInfo{LID: 1, QPN: 0x99, PSN: 5})
	if err != nil || remote.QPN != 0x4242 || fe.got.Load().QPN != 0x99 {
		t.Fatalf("exchange: %+v %v", remote, err)
	}
	c.Close()
	for deadline := time.Now().Add(5 * time.Second); fe.released.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("queue pair not released when the control connection closed")
		}
		time.Sleep(time.Millisecond)
	}
}
