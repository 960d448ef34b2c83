package rdma_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/emu"
	"golang.org/x/sys/unix"
)

const pageSize = 4096

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// cluster builds n in-process memory nodes behind an emu transport wrapped
// in fault injection.
func cluster(t *testing.T, n int) (*rdma.Faults, []rdma.NodeID) {
	t.Helper()
	tr := emu.New(emu.DefaultModel())
	var ids []rdma.NodeID
	for i := range n {
		st, err := memnode.OpenStore(64<<20, 16<<20, "", quiet)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		id := rdma.NodeID(fmt.Sprintf("emu-%d", i))
		tr.AddNode(id, st)
		ids = append(ids, id)
	}
	return rdma.NewFaults(tr), ids
}

func segData(seed uint64, pages int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, pages*pageSize)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func dstBuf(t *testing.T, tr rdma.Transport, pages int) []byte {
	t.Helper()
	m, err := offheap.Anon(pages*pageSize, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := tr.Register(m.B)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Release(); m.Unmap() })
	return m.B
}

// readAll reads every page of seg into dst and checks the bytes.
func readAll(t *testing.T, c *rdma.Client, seg *rdma.SegmentInfo, want, dst []byte) {
	t.Helper()
	reqs := make([]rdma.PageRead, seg.Pages)
	for p := range reqs {
		reqs[p] = rdma.PageRead{Page: p, Dst: dst[p*pageSize : (p+1)*pageSize]}
	}
	clear(dst[:len(want)])
	if err := c.Read(context.Background(), seg, reqs); err != nil {
		t.Fatalf("read segment %#x: %v", seg.ID, err)
	}
	if !bytes.Equal(dst[:len(want)], want) {
		t.Fatalf("segment %#x: wrong bytes", seg.ID)
	}
}

func TestReplicationFailover(t *testing.T) {
	f, nodes := cluster(t, 3)
	c, err := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, ReadTimeout: 30 * time.Millisecond, DownFor: time.Hour, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	var segs []*rdma.SegmentInfo
	var datas [][]byte
	for i := range 12 {
		d := segData(uint64(i), 16)
		s, err := c.Publish(ctx, rdma.SegmentID(i+1), pageSize, d)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Replicas) != 2 || s.Replicas[0].Node == s.Replicas[1].Node {
			t.Fatalf("segment %d placed on %v", i, s.Replicas)
		}
		segs, datas = append(segs, s), append(datas, d)
	}
	dst := dstBuf(t, f, 16)
	for i := range segs {
		readAll(t, c, segs[i], datas[i], dst)
	}
	if st := c.Stats(); st.Failovers != 0 || st.DigestFailures != 0 {
		t.Fatalf("healthy cluster failed over: %+v", st)
	}

	for _, fault := range []struct {
		name  string
		f     rdma.Fault
		check func(rdma.Stats) bool
	}{
		{"down", rdma.Fault{Down: true}, func(s rdma.Stats) bool { return s.NodeErrors > 0 }},
		{"corrupt", rdma.Fault{Corrupt: true}, func(s rdma.Stats) bool { return s.DigestFailures > 0 }},
		{"hung", rdma.Fault{Blackhole: true}, func(s rdma.Stats) bool { return s.Timeouts > 0 }},
	} {
		t.Run(fault.name, func(t *testing.T) {
			// a fresh client so no node is already marked down
			c, err := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, ReadTimeout: 30 * time.Millisecond, DownFor: time.Hour, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			f.Set(nodes[1], fault.f)
			defer f.Set(nodes[1], rdma.Fault{})
			for i := range segs {
				readAll(t, c, segs[i], datas[i], dst)
			}
			st := c.Stats()
			if !fault.check(st) || st.Failovers == 0 {
				t.Fatalf("fault %s not exercised: %+v", fault.name, st)
			}
		})
	}

	// Both replicas of a segment lost: the read must fail, not return garbage.
	f.Set(segs[0].Replicas[0].Node, rdma.Fault{Down: true})
	f.Set(segs[0].Replicas[1].Node, rdma.Fault{Corrupt: true})
	c2, _ := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, ReadTimeout: 30 * time.Millisecond, Logger: quiet})
	defer c2.Close()
	err = c2.Read(ctx, segs[0], []rdma.PageRead{{Page: 0, Dst: dst[:pageSize]}})
	if err == nil {
		t.Fatal("read succeeded with no valid replica")
	}
	t.Logf("expected error: %v", err)
}

func TestErasureCoding(t *testing.T) {
	f, nodes := cluster(t, 5)
	c, err := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, EC: &rdma.ECConfig{Data: 3, Parity: 2}, ReadTimeout: 30 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := segData(99, 10) // 10 pages over 3 shards of 4 rows: padding exercised
	seg, err := c.Publish(context.Background(), 77, pageSize, data)
	if err != nil {
		t.Fatal(err)
	}
	if seg.EC == nil || len(seg.EC.Shards) != 5 || seg.EC.ShardPages != 4 {
		t.Fatalf("layout %+v", seg.EC)
	}
	dst := dstBuf(t, f, 10)
	readAll(t, c, seg, data, dst)
	// Lose two shards' nodes (the parity budget), one of them a data shard.
	f.Set(seg.EC.Shards[0].Node, rdma.Fault{Down: true})
	f.Set(seg.EC.Shards[4].Node, rdma.Fault{Corrupt: true})
	readAll(t, c, seg, data, dst)
	if st := c.Stats(); st.Reconstructions < 4 {
		t.Fatalf("expected ≥4 reconstructed pages (shard 0 rows), got %+v", st)
	}
	// A third loss exceeds the code: the read must fail cleanly.
	f.Set(seg.EC.Shards[1].Node, rdma.Fault{Down: true})
	if err := c.Read(context.Background(), seg, []rdma.PageRead{{Page: 0, Dst: dst[:pageSize]}}); err == nil {
		t.Fatal("read of a page with 3 of 5 shards lost succeeded")
	}
}

func TestUnregisteredDestinationRefused(t *testing.T) {
	f, nodes := cluster(t, 2)
	c, _ := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, Logger: quiet})
	defer c.Close()
	seg, err := c.Publish(context.Background(), 5, pageSize, segData(5, 1))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Read(context.Background(), seg, []rdma.PageRead{{Page: 0, Dst: make([]byte, pageSize)}})
	if !errors.Is(err, rdma.ErrNotRegistered) {
		t.Fatalf("heap destination: got %v, want ErrNotRegistered", err)
	}
}

// TestPrefetchYieldsToDemand fills the prefetch queue with slow work and
// checks a demand read completes long before the queue drains.
func TestPrefetchYieldsToDemand(t *testing.T) {
	f, nodes := cluster(t, 2)
	c, _ := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, Replicas: 1, Logger: quiet})
	defer c.Close()
	ctx := context.Background()
	data := segData(3, 64)
	seg, err := c.Publish(ctx, 3, pageSize, data)
	if err != nil {
		t.Fatal(err)
	}
	pdst := dstBuf(t, f, 64)
	f.Set(seg.Replicas[0].Node, rdma.Fault{Delay: 5 * time.Millisecond}) // every completion poll is slow
	var pend []*rdma.Pending
	for p := range 64 {
		pend = append(pend, c.Prefetch(seg, []rdma.PageRead{{Page: p, Dst: pdst[p*pageSize : (p+1)*pageSize]}}))
	}
	ddst := dstBuf(t, f, 1)
	time.Sleep(2 * time.Millisecond)
	f.Set(seg.Replicas[0].Node, rdma.Fault{}) // demand connection is not delayed
	start := time.Now()
	if err := c.Read(ctx, seg, []rdma.PageRead{{Page: 63, Dst: ddst}}); err != nil {
		t.Fatal(err)
	}
	demand := time.Since(start)
	backlog := c.PrefetchBacklog()
	if !bytes.Equal(ddst, data[63*pageSize:]) {
		t.Fatal("demand read wrong bytes")
	}
	for _, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(pdst, data) {
		t.Fatal("prefetched bytes wrong")
	}
	if backlog == 0 {
		t.Fatalf("prefetch queue drained before the demand read finished (demand took %v): demand waited behind prefetch", demand)
	}
	if c.Stats().PrefetchPages != 64 || c.Latency(rdma.Prefetch).Count() != 64 || c.Latency(rdma.Demand).Count() != 1 {
		t.Fatalf("stats %+v", c.Stats())
	}
	t.Logf("demand read %v with %d prefetch requests still queued", demand, backlog)
}

// BenchmarkClientEmu measures the whole client path (placement, dispatch,
// digest verification) over the emulated transport: EMULATED figures.
func BenchmarkClientEmu(b *testing.B) {
	tr := emu.New(emu.DefaultModel())
	var nodes []rdma.NodeID
	for i := range 2 {
		st, err := memnode.OpenStore(64<<20, 0, "", quiet)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		id := rdma.NodeID(fmt.Sprintf("n%d", i))
		tr.AddNode(id, st)
		nodes = append(nodes, id)
	}
	c, err := rdma.NewClient(rdma.Options{Transport: tr, Nodes: nodes, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const pages = 1024
	seg, err := c.Publish(context.Background(), 1, pageSize, segData(1, pages))
	if err != nil {
		b.Fatal(err)
	}
	m, _ := offheap.Anon(32*pageSize, unix.PROT_READ|unix.PROT_WRITE, 0)
	defer m.Unmap()
	reg, _ := tr.Register(m.B)
	defer reg.Release()
	for _, batch := range []int{1, 32} {
		b.Run(fmt.Sprintf("batch%d", batch), func(b *testing.B) {
			c.Latency(rdma.Demand).Reset()
			reqs := make([]rdma.PageRead, batch)
			start := time.Now()
			for i := range b.N {
				for k := range reqs {
					reqs[k] = rdma.PageRead{Page: (i*batch + k) % pages, Dst: m.B[k*pageSize : (k+1)*pageSize]}
				}
				if err := c.Read(context.Background(), seg, reqs); err != nil {
					b.Fatal(err)
				}
			}
			el := time.Since(start)
			h := c.Latency(rdma.Demand)
			b.ReportMetric(float64(h.Quantile(0.5).Nanoseconds()), "emulated-p50-ns")
			b.ReportMetric(float64(h.Quantile(0.99).Nanoseconds()), "emulated-p99-ns")
			b.ReportMetric(float64(b.N*batch)/el.Seconds(), "emulated-pages/s")
		})
	}
}

func TestObjectSource(t *testing.T) {
	f, nodes := cluster(t, 3)
	c, _ := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, Logger: quiet})
	defer c.Close()
	data := segData(8, 37) // 37 pages in chunks of 8: a partial last chunk
	obj, err := c.PublishObject(context.Background(), 100, pageSize, data, 8)
	if err != nil {
		t.Fatal(err)
	}
	if len(obj.Segs) != 5 {
		t.Fatalf("%d segments", len(obj.Segs))
	}
	src := &rdma.ObjectSource{C: c, Obj: obj}
	arena, release, err := src.Arena(37 * pageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for _, r := range []struct{ off, n int }{{0, 37}, {5, 10}, {36, 1}} {
		for _, pf := range []bool{false, true} {
			dst := arena[r.off*pageSize : (r.off+r.n)*pageSize]
			clear(dst)
			if err := src.Read(context.Background(), uint64(r.off*pageSize), dst, pf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst, data[r.off*pageSize:(r.off+r.n)*pageSize]) {
				t.Fatalf("pages [%d,+%d) prefetch=%v: wrong bytes", r.off, r.n, pf)
			}
		}
	}
	if err := src.Read(context.Background(), 100, arena[:pageSize], false); err == nil {
		t.Fatal("unaligned read accepted")
	}
}

// TestPlaceHook checks that a control-plane placement decides where new
// segments go, with rendezvous order behind it.
func TestPlaceHook(t *testing.T) {
	tr, ids := cluster(t, 4)
	want := []rdma.NodeID{ids[3], ids[1]}
	c, err := rdma.NewClient(rdma.Options{Transport: tr, Nodes: ids, Replicas: 2, Logger: quiet,
		Place: func(rdma.SegmentID, int) []rdma.NodeID { return []rdma.NodeID{ids[3], "not-a-node", ids[1]} }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for id := rdma.SegmentID(1); id <= 8; id++ {
		s, err := c.Publish(context.Background(), id, pageSize, segData(uint64(id), 2))
		if err != nil {
			t.Fatal(err)
		}
		got := map[rdma.NodeID]bool{}
		for _, r := range s.Replicas {
			got[r.Node] = true
		}
		if !got[want[0]] || !got[want[1]] {
			t.Fatalf("segment %d on %v, want %v", id, s.Replicas, want)
		}
	}
}
