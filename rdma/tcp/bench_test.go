package tcp_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/rdmatest"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
)

// BenchmarkTCPLoopback reads 4 KiB pages from a memory node on 127.0.0.1
// (in-process server, real sockets): single reads at queue depth 1, batches
// of 32 with one request frame, and 4 such batches pipelined — admitted by
// the pod secret (plain frames) and by mutual TLS (frames inside TLS 1.3),
// side by side. Numbers are loopback TCP on this machine, not RDMA.
func BenchmarkTCPLoopback(b *testing.B) {
	c := newCerts(b)
	srv, _, err := memnode.ServerTLS(c.node)
	if err != nil {
		b.Fatal(err)
	}
	cli, _, err := memnode.ClientTLS(c.host1)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("secret", func(b *testing.B) {
		benchLoopback(b, memnode.Config{Secret: secret}, tcp.New(secret, "bench"))
	})
	b.Run("tls", func(b *testing.B) {
		benchLoopback(b, memnode.Config{TLS: srv}, tcp.NewTLS(cli))
	})
}

func benchLoopback(b *testing.B, cfg memnode.Config, tr *tcp.Transport) {
	cfg.Capacity, cfg.Logger = 64<<20, slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := memnode.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go n.Serve(l)
	c, err := tr.Dial(context.Background(), rdma.NodeID(l.Addr().String()))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const pages = 1024
	data := randData(1, pages*pageSize)
	ref, err := c.Write(context.Background(), &rdma.WriteSegment{ID: 1, PageSize: pageSize, Data: data, Digests: rdma.PageDigests(data, pageSize)})
	if err != nil {
		b.Fatal(err)
	}
	dst := rdmatest.Dst(b, tr, 4*32*pageSize)
	b.Run("single", func(b *testing.B) { rdmatest.BenchReads(b, c, ref, pages, pageSize, dst, 1, 1, "") })
	b.Run("batch32", func(b *testing.B) { rdmatest.BenchReads(b, c, ref, pages, pageSize, dst, 32, 1, "batch-") })
	b.Run("batch32x4", func(b *testing.B) { rdmatest.BenchReads(b, c, ref, pages, pageSize, dst, 32, 4, "batch-") })
}
