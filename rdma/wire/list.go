package wire

import (
	"encoding/binary"
	"fmt"
)

// Inventory requests: what a node holds (list, paged) and how full it is
// (usage). The garbage collector and re-replication use them; every
// admitted client may send them.

const (
	// MaxListPage is the most entries one ListResp carries; a node with
	// more segments answers in pages.
	MaxListPage = 512
	// MaxIdentity bounds a writer identity (a certificate's common name, or
	// "pod NAME" under the pod secret).
	MaxIdentity = 255
	// ListReqSize is the List request body: from u64, max u32, 0 u32.
	ListReqSize = 16
	// UsageRespSize is the UsageResp body.
	UsageRespSize = 32

	listEntryFixed = 32
	listRespFixed  = 16
	// MaxListResp bounds a ListResp body.
	MaxListResp = listRespFixed + MaxListPage*(listEntryFixed+MaxIdentity)
)

// ListReq asks for the segments whose ID is at least From, in ID order, at
// most Max of them (0 or more than MaxListPage: MaxListPage).
type ListReq struct {
	From uint64
	Max  uint32
}

// EncodeListReq appends a List body.
func EncodeListReq(dst []byte, r *ListReq) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, r.From)
	dst = binary.LittleEndian.AppendUint32(dst, r.Max)
	return binary.LittleEndian.AppendUint32(dst, 0)
}

// DecodeListReq decodes a List body.
func DecodeListReq(b []byte) (*ListReq, error) {
	if len(b) != ListReqSize || binary.LittleEndian.Uint32(b[12:]) != 0 {
		return nil, fmt.Errorf("list request of %d bytes, want %d with a zero reserved field", len(b), ListReqSize)
	}
	return &ListReq{From: binary.LittleEndian.Uint64(b), Max: binary.LittleEndian.Uint32(b[8:])}, nil
}

// Flags of a ListEntry.
const (
	// EntryReferenced: a published snapshot in the catalog lists the
	// segment (as the node's view of the catalog has it).
	EntryReferenced uint16 = 1 << 0
	// EntryReferencedHere: one lists it on this node.
	EntryReferencedHere uint16 = 1 << 1
	entryFlagsKnown            = EntryReferenced | EntryReferencedHere
)

// ListEntry describes one stored segment.
type ListEntry struct {
	ID       uint64
	Len      uint64
	PutNanos int64 // when it was stored (Unix ns)
	PageSize uint32
	Flags    uint16
	Writer   string // the identity that stored it ("" if unknown)
}

// ListResp is one page of a node's segments. More is set when segments
// with IDs from Next on remain.
type ListResp struct {
	Entries []ListEntry
	More    bool
	Next    uint64
}

// EncodeListResp appends a ListResp body. Writers longer than MaxIdentity
// are cut.
func EncodeListResp(dst []byte, r *ListResp) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Entries)))
	var f uint32
	if r.More {
		f = 1
	}
	dst = binary.LittleEndian.AppendUint32(dst, f)
	dst = binary.LittleEndian.AppendUint64(dst, r.Next)
	for _, e := range r.Entries {
		w := e.Writer
		if len(w) > MaxIdentity {
			w = w[:MaxIdentity]
		}
		dst = binary.LittleEndian.AppendUint64(dst, e.ID)
		dst = binary.LittleEndian.AppendUint64(dst, e.Len)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(e.PutNanos))
		dst = binary.LittleEndian.AppendUint32(dst, e.PageSize)
		dst = binary.LittleEndian.AppendUint16(dst, e.Flags)
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(w)))
		dst = append(dst, w...)
	}
	return dst
}

// DecodeListResp decodes a ListResp body (from an untrusted node: total,
// bounded by MaxListPage entries).
func DecodeListResp(b []byte) (*ListResp, error) {
	if len(b) < listRespFixed {
		return nil, fmt.Errorf("list response of %d bytes, need at least %d", len(b), listRespFixed)
	}
	n := binary.LittleEndian.Uint32(b)
	f := binary.LittleEndian.Uint32(b[4:])
	if n > MaxListPage || f&^1 != 0 {
		return nil, fmt.Errorf("list response of %d entries (max %d), flags %#x", n, MaxListPage, f)
	}
	r := &ListResp{More: f&1 != 0, Next: binary.LittleEndian.Uint64(b[8:]), Entries: make([]ListEntry, 0, n)}
	p := b[listRespFixed:]
	for i := uint32(0); i < n; i++ {
		if len(p) < listEntryFixed {
			return nil, fmt.Errorf("list response truncated in entry %d", i)
		}
		e := ListEntry{ID: binary.LittleEndian.Uint64(p), Len: binary.LittleEndian.Uint64(p[8:]),
			PutNanos: int64(binary.LittleEndian.Uint64(p[16:])), PageSize: binary.LittleEndian.Uint32(p[24:]),
			Flags: binary.LittleEndian.Uint16(p[28:])}
		wl := int(binary.LittleEndian.Uint16(p[30:]))
		if e.Flags&^entryFlagsKnown != 0 || wl > MaxIdentity || wl > len(p)-listEntryFixed {
			return nil, fmt.Errorf("list entry %d: flags %#x, writer of %d bytes (max %d, %d left)", i, e.Flags, wl, MaxIdentity, len(p)-listEntryFixed)
		}
		e.Writer = string(p[listEntryFixed : listEntryFixed+wl])
		p = p[listEntryFixed+wl:]
		r.Entries = append(r.Entries, e)
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%d bytes after the last list entry", len(p))
	}
	return r, nil
}

// UsageReq is the (empty) Usage request.
type UsageReq struct{}

// Flags of a UsageResp.
const (
	// UsageAuthorizing: the node authorizes reads and deletes by the
	// cluster catalog (it watches the control plane).
	UsageAuthorizing uint32 = 1 << 0
	// UsageCatalogIncomplete: some catalog entries list no segments
	// (published before segment lists existed), so nothing is refused.
	UsageCatalogIncomplete uint32 = 1 << 1
	usageFlagsKnown               = UsageAuthorizing | UsageCatalogIncomplete
)

// UsageResp is a node's occupancy.
type UsageResp struct {
	Capacity, Used, Segments uint64
	Flags                    uint32
}

// EncodeUsageResp appends a UsageResp body.
func EncodeUsageResp(dst []byte, u *UsageResp) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, u.Capacity)
	dst = binary.LittleEndian.AppendUint64(dst, u.Used)
	dst = binary.LittleEndian.AppendUint64(dst, u.Segments)
	dst = binary.LittleEndian.AppendUint32(dst, u.Flags)
	return binary.LittleEndian.AppendUint32(dst, 0)
}

// DecodeUsageResp decodes a UsageResp body.
func DecodeUsageResp(b []byte) (*UsageResp, error) {
	if len(b) != UsageRespSize || binary.LittleEndian.Uint32(b[28:]) != 0 {
		return nil, fmt.Errorf("usage response of %d bytes, want %d with a zero reserved field", len(b), UsageRespSize)
	}
	u := &UsageResp{Capacity: binary.LittleEndian.Uint64(b), Used: binary.LittleEndian.Uint64(b[8:]),
		Segments: binary.LittleEndian.Uint64(b[16:]), Flags: binary.LittleEndian.Uint32(b[24:])}
	if u.Flags&^usageFlagsKnown != 0 {
		return nil, fmt.Errorf("usage response flags %#x", u.Flags)
	}
	return u, nil
}

// DecodeResponse decodes the body of a node→client inventory frame (the
// fuzz target of what clients accept from nodes).
func DecodeResponse(op Op, body []byte) (any, error) {
	switch op {
	case OpListResp:
		return DecodeListResp(body)
	case OpUsageResp:
		return DecodeUsageResp(body)
	case OpPutOK:
		return DecodePutOK(body)
	case OpStatResp:
		return DecodeStatResp(body)
	case OpHello:
		return DecodeHello(body)
	case OpError:
		return DecodeError(body), nil
	}
	return nil, fmt.Errorf("%w: %s is not a response this decoder knows", ErrBadOp, op)
}
