package pager

import (
	"slices"
	"sync"
)

// History is what earlier restores of one image taught about its cold
// pages: the cold pages their guests demand-faulted, in the order they were
// learned. The recording that built the image saw one input; other inputs
// touch pages it did not (2-130 cold faults per invocation in the captured
// corpus, mostly the same pages run after run, about one page per cold
// extent), and each such fault costs a userfault round trip plus a tier
// read on the critical path. A session given a History (Options.History)
// reads the learned pages from the cold tier while it installs the hot
// set, installs them before it reports the VM ready as far as they have
// arrived by then (the rest right after), and adds the cold pages its own
// guest still faulted on when the VM ends.
//
// A learned page stays learned while the history has room: once it is
// installed ahead it no longer faults, so a restore cannot tell whether it
// still needed it; the oldest learned pages leave first when the budget is
// exceeded. A History is safe for concurrent use; it lives in memory (the
// serve daemon keeps a copy in its state directory, so that a restarted or
// upgraded daemon does not learn again).
type History struct {
	mu    sync.Mutex
	max   int // pages kept
	order []uint64
	known map[uint64]bool
}

// NewHistory returns an empty history keeping at most maxPages learned
// cold pages (0: nothing is learned).
func NewHistory(maxPages int) *History {
	return &History{max: maxPages, known: map[uint64]bool{}}
}

// Pages returns the learned cold pages (indices in the image's cold
// segment), oldest first.
func (h *History) Pages() []uint64 {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.order)
}

// Learn adds the cold pages one restore demand-faulted, in fault order,
// evicts the oldest ones over the budget and returns how many it added.
func (h *History) Learn(pages []uint64) int {
	if h == nil || len(pages) == 0 || h.max <= 0 {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	added := 0
	for _, p := range pages {
		if h.known[p] {
			continue
		}
		h.known[p] = true
		h.order = append(h.order, p)
		added++
	}
	if over := len(h.order) - h.max; over > 0 {
		for _, p := range h.order[:over] {
			delete(h.known, p)
		}
		h.order = slices.Delete(h.order, 0, over)
	}
	return added
}

// Histories keeps one History per image, for a daemon serving many
// snapshots: images are named by their content ID, so a republished
// snapshot starts a new history.
type Histories struct {
	mu       sync.Mutex
	maxBytes uint64
	maxCount int
	m        map[string]*History
	lru      []string
}

// NewHistories keeps up to maxImages histories of maxBytes of learned pages
// each (the least recently used image's history is dropped first).
// maxBytes 0 disables learning: For then returns nil.
func NewHistories(maxBytes uint64, maxImages int) *Histories {
	return &Histories{maxBytes: maxBytes, maxCount: max(maxImages, 1), m: map[string]*History{}}
}

// For returns the history of image id, whose pages are pageSize bytes,
// creating it (nil when learning is off); created says it is new (its
// owner may fill it from what it kept).
func (hs *Histories) For(id string, pageSize uint64) (h *History, created bool) {
	if hs == nil || hs.maxBytes == 0 || pageSize == 0 || hs.maxBytes < pageSize {
		return nil, false
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if i := slices.Index(hs.lru, id); i >= 0 {
		hs.lru = append(slices.Delete(hs.lru, i, i+1), id)
		return hs.m[id], false
	}
	h = NewHistory(int(hs.maxBytes / pageSize))
	hs.m[id] = h
	hs.lru = append(hs.lru, id)
	for len(hs.lru) > hs.maxCount {
		delete(hs.m, hs.lru[0])
		hs.lru = hs.lru[1:]
	}
	return h, true
}
