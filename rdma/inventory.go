package rdma

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Inventory: what a memory node holds and how full it is, for garbage
// collection, re-replication and operators.

// StoredSegment is one segment as a node reports it.
type StoredSegment struct {
	ID       SegmentID
	Len      uint64
	PageSize int
	// Writer is the identity that stored it (a host's certificate name,
	// or "pod NAME" under the pod secret; "" if not recorded).
	Writer string
	// Stored is when the node stored it.
	Stored time.Time
	// Referenced: the node's view of the cluster catalog lists it;
	// ReferencedHere: lists it on this node (both always false on a node
	// that does not watch the catalog).
	Referenced, ReferencedHere bool
}

// NodeUsage is a node's occupancy.
type NodeUsage struct {
	Capacity, Used, Segments uint64
	// Authorizing: the node authorizes reads and deletes by the cluster
	// catalog. CatalogIncomplete: some entries list no segments, so it
	// refuses nothing.
	Authorizing, CatalogIncomplete bool
}

// ListPage is one page of a node's segments: More is set when segments
// with IDs from Next on remain.
type ListPage struct {
	Segments []StoredSegment
	More     bool
	Next     SegmentID
}

// Inventory is implemented by connections that can list a node's segments
// (rdma/tcp, rdma/emu, rdma/verbs through its control connection).
type Inventory interface {
	// ListFrom returns up to max segments with IDs from from on, in ID
	// order (the node bounds a page).
	ListFrom(ctx context.Context, from SegmentID, max int) (ListPage, error)
	// Usage returns the node's capacity and usage.
	Usage(ctx context.Context) (NodeUsage, error)
}

// ErrNoInventory is returned for a transport whose connections cannot list.
var ErrNoInventory = errors.New("this transport cannot list a node's segments")

func (c *Client) inventory(ctx context.Context, n NodeID) (Inventory, error) {
	cc, err := c.conn(ctx, c.node(n), Demand)
	if err != nil {
		return nil, err
	}
	inv, ok := cc.c.(Inventory)
	if !ok {
		return nil, fmt.Errorf("%w (%s)", ErrNoInventory, c.o.Transport.Name())
	}
	return inv, nil
}

// List returns every segment node n holds, in ID order, reading it page
// by page.
func (c *Client) List(ctx context.Context, n NodeID) ([]StoredSegment, error) {
	inv, err := c.inventory(ctx, n)
	if err != nil {
		return nil, err
	}
	var out []StoredSegment
	var from SegmentID
	for {
		p, err := inv.ListFrom(ctx, from, 0)
		if err != nil {
			return out, fmt.Errorf("listing the segments of memory node %s: %w", n, err)
		}
		out = append(out, p.Segments...)
		if !p.More {
			return out, nil
		}
		if p.Next <= from {
			return out, fmt.Errorf("listing the segments of memory node %s: its cursor went from %#x to %#x", n, from, p.Next)
		}
		from = p.Next
	}
}

// Usage asks node n for its capacity and usage.
func (c *Client) Usage(ctx context.Context, n NodeID) (NodeUsage, error) {
	inv, err := c.inventory(ctx, n)
	if err != nil {
		return NodeUsage{}, err
	}
	u, err := inv.Usage(ctx)
	if err != nil {
		return u, fmt.Errorf("reading the usage of memory node %s: %w", n, err)
	}
	return u, nil
}
