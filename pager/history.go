package pager

import (
	"slices"
	"sync"
)

// History is what earlier restores of one image taught about its cold
// pages: the cold extents their guests demand-faulted, in the order they
// were learned. The recording that
// built the image saw one input; other inputs touch pages it did not
// (6-130 cold faults per invocation in the captured corpus, mostly the same
// extents run after run), and each such fault costs a userfault round trip
// plus a tier read on the critical path. A session given a History
// (Options.History) reads and installs the learned extents while it
// installs the hot set, before it reports the VM ready as far as they have
// arrived by then (the rest right after), and adds the extents its own
// guest still faulted on when the VM ends.
//
// A learned extent stays learned while the history has room: once it is
// read ahead its pages no longer fault, so a restore cannot tell whether it
// still needed them; the oldest learned extents leave first when the byte
// budget is exceeded. A History is safe for concurrent use; it lives in
// memory (a restarted daemon learns again).
type History struct {
	mu     sync.Mutex
	max    uint64 // bytes of learned extents kept
	bytes  uint64
	order  []int // oldest first
	sizeOf map[int]uint64
}

// NewHistory returns an empty history keeping at most maxBytes of learned
// extents (maxBytes 0: nothing is learned).
func NewHistory(maxBytes uint64) *History {
	return &History{max: maxBytes, sizeOf: map[int]uint64{}}
}

// Extents returns the learned extents, oldest first.
func (h *History) Extents() []int {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.order)
}

// Bytes returns the size of the learned extents.
func (h *History) Bytes() uint64 {
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bytes
}

// Learn adds the extents one restore demand-faulted (in fault order), with
// their sizes, evicts the oldest ones over the budget and returns how many
// it added. An extent already learned keeps its place; one larger than the
// whole budget is not learned.
func (h *History) Learn(faults []int, size func(x int) uint64) int {
	if h == nil || len(faults) == 0 {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	added := 0
	for _, x := range faults {
		if _, ok := h.sizeOf[x]; ok {
			continue
		}
		n := size(x)
		if n == 0 || n > h.max {
			continue
		}
		h.sizeOf[x] = n
		h.order = append(h.order, x)
		h.bytes += n
		added++
	}
	for h.bytes > h.max && len(h.order) > 0 {
		old := h.order[0]
		h.order = h.order[1:]
		h.bytes -= h.sizeOf[old]
		delete(h.sizeOf, old)
	}
	return added
}

// Histories keeps one History per image, for a daemon serving many
// snapshots: images are named by their content ID, so a republished
// snapshot starts a new history.
type Histories struct {
	mu       sync.Mutex
	max      uint64
	maxCount int
	m        map[string]*History
	lru      []string
}

// NewHistories keeps up to maxImages histories of maxBytes each (the least
// recently used image's history is dropped first). maxBytes 0 disables
// learning: For then returns nil.
func NewHistories(maxBytes uint64, maxImages int) *Histories {
	return &Histories{max: maxBytes, maxCount: max(maxImages, 1), m: map[string]*History{}}
}

// For returns image id's history, creating it (nil when learning is off).
func (hs *Histories) For(id string) *History {
	if hs == nil || hs.max == 0 {
		return nil
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if i := slices.Index(hs.lru, id); i >= 0 {
		hs.lru = append(slices.Delete(hs.lru, i, i+1), id)
		return hs.m[id]
	}
	h := NewHistory(hs.max)
	hs.m[id] = h
	hs.lru = append(hs.lru, id)
	for len(hs.lru) > hs.maxCount {
		delete(hs.m, hs.lru[0])
		hs.lru = hs.lru[1:]
	}
	return h
}
