package rdma_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/rdma"
)

// TestRereplicate: a segment whose replica node is lost is copied from the
// surviving replica to another node, and then reads without the lost node
// and without the old survivor return the right bytes.
func TestRereplicate(t *testing.T) {
	f, nodes := cluster(t, 4)
	c, err := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, ReadTimeout: 30 * time.Millisecond, DownFor: time.Hour, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	data := segData(9, 24)
	seg, err := c.Publish(ctx, 77, pageSize, data)
	if err != nil {
		t.Fatal(err)
	}
	lost, survivor := seg.Replicas[0].Node, seg.Replicas[1].Node
	f.Set(lost, rdma.Fault{Down: true})
	drop := func(n rdma.NodeID) bool { return n == lost }
	got, changed, err := c.Rereplicate(ctx, seg, drop)
	if err != nil || !changed || len(got.Replicas) != 2 {
		t.Fatalf("rereplicate: %+v changed=%v err=%v", got, changed, err)
	}
	var nodesNow []rdma.NodeID
	for _, r := range got.Replicas {
		nodesNow = append(nodesNow, r.Node)
	}
	if slices.Contains(nodesNow, lost) || !slices.Contains(nodesNow, survivor) {
		t.Fatalf("replicas after repair %v (lost %s, survivor %s)", nodesNow, lost, survivor)
	}
	if len(seg.Replicas) != 2 || seg.Replicas[0].Node != lost {
		t.Fatal("Rereplicate modified its argument")
	}
	// Only the new copy left: it must hold the same bytes.
	f.Set(survivor, rdma.Fault{Down: true})
	c2, err := rdma.NewClient(rdma.Options{Transport: f, Nodes: nodes, ReadTimeout: 30 * time.Millisecond, DownFor: time.Hour, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	readAll(t, c2, got, data, dstBuf(t, f, 24))
	// Nothing to do for a healthy segment.
	if _, changed, err := c.Rereplicate(ctx, got, func(rdma.NodeID) bool { return false }); err != nil || changed {
		t.Fatalf("healthy segment: changed=%v %v", changed, err)
	}
	// Every replica lost: an error, never a fabricated segment.
	if _, _, err := c.Rereplicate(ctx, got, func(rdma.NodeID) bool { return true }); err == nil {
		t.Fatal("a segment with no surviving replica was 'repaired'")
	}
}
