package emu_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/emu"
	"github.com/aquifer-pool/aquifer/rdma/rdmatest"
)

func setup(t *testing.T) (*emu.Transport, *emu.Conn, rdma.SegmentRef) {
	st, err := memnode.OpenStore(8<<20, 0, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	tr := emu.New(emu.DefaultModel())
	tr.AddNode("n", st)
	c, err := tr.Dial(context.Background(), "n")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	data := make([]byte, 256*4096)
	ref, err := c.Write(context.Background(), &rdma.WriteSegment{ID: 1, PageSize: 4096, Data: data, Digests: rdma.PageDigests(data, 4096)})
	if err != nil {
		t.Fatal(err)
	}
	return tr, c.(*emu.Conn), ref
}

// TestModelDeterministicAndHonoured checks that two transports with the
// same seed model the same latencies, that the model follows its formula,
// and that no completion is released before its modelled time.
func TestModelDeterministicAndHonoured(t *testing.T) {
	m := emu.DefaultModel()
	var runs [2][]time.Duration
	for r := range runs {
		tr, c, ref := setup(t)
		dst := rdmatest.Dst(t, tr, 256*4096)
		for i := range 50 {
			start := time.Now()
			if err := c.PostReads([]rdma.ReadOp{{Seg: ref, Off: uint64(i) * 4096, Dst: dst[:4096]}}); err != nil {
				t.Fatal(err)
			}
			if _, err := rdma.PollAll(context.Background(), c, 1); err != nil {
				t.Fatal(err)
			}
			wall := time.Since(start)
			mod := c.Modelled()[i]
			if wall < mod {
				t.Fatalf("read %d completed after %v, before its modelled %v", i, wall, mod)
			}
			lo := m.Base + m.Wire(4096) + m.PerOp
			if mod < lo || mod > lo+20*m.Jitter {
				t.Fatalf("modelled %v outside [%v, %v]", mod, lo, lo+20*m.Jitter)
			}
		}
		runs[r] = c.Modelled()
	}
	for i := range runs[0] {
		if runs[0][i] != runs[1][i] {
			t.Fatalf("same seed, different model at read %d: %v vs %v", i, runs[0][i], runs[1][i])
		}
	}
	// A 1 MiB batch is bandwidth bound: ≥ 1 MiB / 12.5 GB/s ≈ 84 µs.
	tr, c, ref := setup(t)
	dst := rdmatest.Dst(t, tr, 256*4096)
	ops := make([]rdma.ReadOp, 256)
	for i := range ops {
		ops[i] = rdma.ReadOp{Seg: ref, Off: uint64(i) * 4096, Dst: dst[i*4096 : (i+1)*4096], Cookie: uint64(i)}
	}
	if err := c.PostReads(ops); err != nil {
		t.Fatal(err)
	}
	if _, err := rdma.PollAll(context.Background(), c, 256); err != nil {
		t.Fatal(err)
	}
	if mod := c.Modelled()[0]; mod < m.Wire(1<<20)+m.Base {
		t.Fatalf("1 MiB batch modelled at %v, below the 100 Gb/s wire time", mod)
	}
	if err := c.PostReads([]rdma.ReadOp{{Seg: ref, Off: 256 * 4096, Dst: dst[:4096]}}); err != nil {
		t.Fatal(err)
	}
	cs, _ := rdma.PollAll(context.Background(), c, 1)
	if cs[0].Err == nil {
		t.Fatal("out-of-bounds emulated read succeeded")
	}
}
