package emu_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/emu"
	"github.com/aquifer-pool/aquifer/rdma/rdmatest"
)

// BenchmarkEmu reads 4 KiB pages through the emulated RDMA model
// (DefaultModel: 2.5 µs base, 100 Gb/s). Every figure is EMULATED: the
// model's arithmetic plus this machine's Go scheduling overhead.
func BenchmarkEmu(b *testing.B) {
	st, err := memnode.OpenStore(64<<20, 0, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	tr := emu.New(emu.DefaultModel())
	tr.AddNode("n0", st)
	c, err := tr.Dial(context.Background(), "n0")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const pages, pageSize = 1024, 4096
	data := make([]byte, pages*pageSize)
	for i := range data {
		data[i] = byte(i * 7)
	}
	ref, err := c.Write(context.Background(), &rdma.WriteSegment{ID: 1, PageSize: pageSize, Data: data, Digests: rdma.PageDigests(data, pageSize)})
	if err != nil {
		b.Fatal(err)
	}
	dst := rdmatest.Dst(b, tr, 4*32*pageSize)
	b.Run("single", func(b *testing.B) { rdmatest.BenchReads(b, c, ref, pages, pageSize, dst, 1, 1, "emulated-") })
	b.Run("batch32", func(b *testing.B) { rdmatest.BenchReads(b, c, ref, pages, pageSize, dst, 32, 1, "emulated-batch-") })
	b.Run("batch32x4", func(b *testing.B) { rdmatest.BenchReads(b, c, ref, pages, pageSize, dst, 32, 4, "emulated-batch-") })
}
