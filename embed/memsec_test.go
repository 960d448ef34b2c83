package embed

import (
	"errors"
	"testing"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/rdma"
)

// A node a host recorded (old mode) and the same node's own registration
// count once, the node's own winning; what this host placed since a node's
// last report counts as used until the next report.
func TestPlacementView(t *testing.T) {
	s := &Server{}
	ms := []control.Member{
		{ID: "memnode-0-a", Addr: "a:1", Capacity: 100},
		{ID: "a", Addr: "a:1", Capacity: 100, Used: 10, Self: true},
		{ID: "b", Addr: "b:1", Capacity: 100, Used: 50, Self: true},
	}
	v := s.placementView(append([]control.Member(nil), ms...))
	if len(v) != 2 || !v[0].Self || v[0].Used != 10 || v[1].Used != 50 {
		t.Fatalf("view %+v", v)
	}
	s.placedOn([]rdma.NodeID{"a:1", "b:1"}, 30)
	v = s.placementView(append([]control.Member(nil), ms...))
	if v[0].Used != 40 || v[1].Used != 80 {
		t.Fatalf("after placing 30 bytes on each: %+v", v)
	}
	ms[1].Used = 41 // a reported again
	v = s.placementView(append([]control.Member(nil), ms...))
	if v[0].Used != 41 || v[1].Used != 80 {
		t.Fatalf("after a's report: %+v", v)
	}
	if pl, err := control.PlaceSegment(v, 20, 1); err != nil || pl[0].Addr != "a:1" {
		t.Fatalf("placement %+v %v", pl, err)
	}
}

func TestMemNodeAccessValidation(t *testing.T) {
	for _, tc := range []struct {
		c    PodConfig
		want string
	}{
		{PodConfig{MemNodeAccess: MemNodeAccess{MemNodesFromControlPlane: true}, MemNodeAddrs: []string{"a:1"}}, "memnodes-from-control-plane"},
		{PodConfig{MemNodeAccess: MemNodeAccess{MemNodesFromControlPlane: true}, MemNodes: 2}, "memnodes-from-control-plane"},
		{PodConfig{MemNodeAccess: MemNodeAccess{MemNodesFromControlPlane: true}, RDMA: "emu"}, "rdma"},
		{PodConfig{MemNodeAccess: MemNodeAccess{MemNodeTLSDir: "/x"}}, "memnode-tls-dir"},
	} {
		tc.c.DataDir = t.TempDir()
		err := tc.c.defaults()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.want {
			t.Errorf("%+v: got %v, want an error on --%s", tc.c, err, tc.want)
		}
	}
	c := PodConfig{DataDir: t.TempDir(), MemNodeAccess: MemNodeAccess{MemNodesFromControlPlane: true}}
	if err := c.defaults(); err != nil || c.RDMA != "tcp" || c.Replicas != 2 || c.MemNodes != 0 {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}
