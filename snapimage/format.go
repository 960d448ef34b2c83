package snapimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Format constants (docs/format.md). All integers are little-endian.
const (
	// Version is the image format version this build writes. Version 2
	// stores pages larger than SubPageSize (2 MiB guests) as their non-zero
	// sub-pages only; this build still reads version 1 (MinVersion).
	Version = 2
	// MinVersion is the oldest image format version this build reads.
	MinVersion = 1
	// SubPageSize is the storage unit of a version 2 image: a page larger
	// than this is stored as its non-zero sub-pages (zero sub-pages are
	// rebuilt when the page is installed), so a 2 MiB guest's image never
	// holds a zero 4 KiB page.
	SubPageSize = 4096
	// HeaderSize is the fixed size of the header at offset 0.
	HeaderSize = 512
	// SegmentAlign is the alignment of the hot and cold segments in the
	// file, so each can be mmapped or copied page-aligned.
	SegmentAlign = 4096
	// DefaultExtentPages is the default maximum number of pages in a cold
	// extent (256 KiB with 4 KiB pages). Images of larger pages default to
	// as many pages as fit in the same 256 KiB, at least one (one page per
	// extent for 2 MiB pages).
	DefaultExtentPages = 64

	regionSize = 24
	runSize    = 24
	digestSize = 8
	extentSize = 24
	sectionAt  = 96  // section table offset in the header
	checksumAt = 504 // header checksum offset
	// Version 2 fields after the section table (9 sections).
	subPageAt   = sectionAt + 24*9 // 312, after the 9 sections: sub-page size u32, then 4 reserved bytes
	hotSubAt    = subPageAt + 8    // stored hot sub-pages u64
	coldSubAt   = hotSubAt + 8     // stored cold sub-pages u64
	v2FieldsEnd = coldSubAt + 8
	// Version 1 had 7 sections (no sub-page maps).
	v1Sections = 7
)

var magic = [8]byte{'A', 'Q', 'U', 'I', 'F', 'I', 'M', 'G'}

// SectionID names one section of an image.
type SectionID int

// The sections, in file order.
const (
	SecRegions SectionID = iota
	SecPageMap
	SecHotDigests
	SecColdDigests
	SecColdExtents
	// SecHotSubMaps and SecColdSubMaps hold, for every stored page of
	// the hot and cold segment, the bitmap of the sub-pages stored for it
	// (version 2 images of pages larger than SubPageSize; empty otherwise).
	SecHotSubMaps
	SecColdSubMaps
	SecHotSegment
	SecColdSegment
	numSections
)

var sectionNames = [numSections]string{"region table", "page map", "hot digest table", "cold digest table", "cold extent table",
	"hot sub-page maps", "cold sub-page maps", "hot segment", "cold segment"}

func (s SectionID) String() string {
	if s >= 0 && s < numSections {
		return sectionNames[s]
	}
	return fmt.Sprintf("section(%d)", int(s))
}

// Section locates one section in the image file.
type Section struct {
	// Offset and Length are in bytes from the start of the image file.
	Offset, Length uint64
	// Digest is the xxhash64 of the section's bytes.
	Digest uint64
}

// Class is what a page of guest memory is in an image.
type Class uint8

// Page classes.
const (
	Zero Class = 0 // all zero, stored nowhere
	Hot  Class = 1 // stored in the hot segment at its hot index
	Cold Class = 2 // stored in the cold segment at its cold index
)

func (c Class) String() string {
	switch c {
	case Zero:
		return "zero"
	case Hot:
		return "hot"
	case Cold:
		return "cold"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Region is one guest memory region, mirroring Firecracker's layout: the
// memory file is the regions' contents concatenated in order.
type Region struct {
	// GuestAddr is the region's guest physical base address.
	GuestAddr uint64
	// Size is the region size in bytes.
	Size uint64
	// FileOffset is where the region starts in the memory file (the sum of
	// the sizes of the regions before it).
	FileOffset uint64
}

// Run maps Count consecutive guest pages starting at Page to one class and,
// for hot and cold runs, to consecutive segment indices starting at Index.
type Run struct {
	Page  uint64
	Index uint64
	Count uint32
	Class Class
}

// Extent is a group of consecutive cold-segment pages that are read and
// verified together.
type Extent struct {
	// First is the cold index of the extent's first page, Pages its length.
	First uint64
	Pages uint32
	// Touched is set for extents of pages the working set touched but that
	// did not fit the hot budget.
	Touched bool
	// Digest is the xxhash64 of the extent's bytes.
	Digest uint64
}

const extentTouched = 1

func putRegion(b []byte, r Region) {
	binary.LittleEndian.PutUint64(b[0:], r.GuestAddr)
	binary.LittleEndian.PutUint64(b[8:], r.Size)
	binary.LittleEndian.PutUint64(b[16:], r.FileOffset)
}

func getRegion(b []byte) Region {
	return Region{binary.LittleEndian.Uint64(b[0:]), binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])}
}

func putRun(b []byte, r Run) {
	binary.LittleEndian.PutUint64(b[0:], r.Page)
	binary.LittleEndian.PutUint64(b[8:], r.Index)
	binary.LittleEndian.PutUint32(b[16:], r.Count)
	b[20] = byte(r.Class)
	b[21], b[22], b[23] = 0, 0, 0
}

func putExtent(b []byte, e Extent) {
	binary.LittleEndian.PutUint64(b[0:], e.First)
	binary.LittleEndian.PutUint32(b[8:], e.Pages)
	var fl uint32
	if e.Touched {
		fl = extentTouched
	}
	binary.LittleEndian.PutUint32(b[12:], fl)
	binary.LittleEndian.PutUint64(b[16:], e.Digest)
}

// header is the decoded fixed header.
type header struct {
	version     uint32
	pageSize    uint32
	subPageSize uint32 // SubPageSize in version 2; the page size in version 1
	hotSub      uint64 // sub-pages stored in the hot segment
	coldSub     uint64 // sub-pages stored in the cold segment
	flags       uint32
	memSize     uint64
	pages       uint64
	zeroPages   uint64
	hotPages    uint64
	coldPages   uint64
	regions     uint32
	extentPages uint32
	runs        uint64
	extents     uint64
	coldTouched uint64 // leading cold pages that the working set touched
	sections    [numSections]Section
}

// subWords is the number of 64-bit words of one sub-page map entry: 0 when
// pages are stored whole (the sub-page size is the page size).
func (h *header) subWords() int {
	if h.subPageSize >= h.pageSize || h.subPageSize == 0 {
		return 0
	}
	return int((h.pageSize/h.subPageSize + 63) / 64)
}

// subPerPage is the number of sub-pages of one page.
func (h *header) subPerPage() uint64 {
	if h.subPageSize == 0 {
		return 1
	}
	return uint64(h.pageSize / h.subPageSize)
}

// encode writes the header in the current version (Version).
func (h *header) encode() []byte {
	b := make([]byte, HeaderSize)
	copy(b, magic[:])
	binary.LittleEndian.PutUint32(b[8:], Version)
	binary.LittleEndian.PutUint32(b[12:], HeaderSize)
	binary.LittleEndian.PutUint32(b[16:], h.pageSize)
	binary.LittleEndian.PutUint32(b[20:], h.flags)
	binary.LittleEndian.PutUint64(b[24:], h.memSize)
	binary.LittleEndian.PutUint64(b[32:], h.pages)
	binary.LittleEndian.PutUint64(b[40:], h.zeroPages)
	binary.LittleEndian.PutUint64(b[48:], h.hotPages)
	binary.LittleEndian.PutUint64(b[56:], h.coldPages)
	binary.LittleEndian.PutUint32(b[64:], h.regions)
	binary.LittleEndian.PutUint32(b[68:], h.extentPages)
	binary.LittleEndian.PutUint64(b[72:], h.runs)
	binary.LittleEndian.PutUint64(b[80:], h.extents)
	binary.LittleEndian.PutUint64(b[88:], h.coldTouched)
	for i, s := range h.sections {
		o := sectionAt + i*24
		binary.LittleEndian.PutUint64(b[o:], s.Offset)
		binary.LittleEndian.PutUint64(b[o+8:], s.Length)
		binary.LittleEndian.PutUint64(b[o+16:], s.Digest)
	}
	binary.LittleEndian.PutUint32(b[subPageAt:], h.subPageSize)
	binary.LittleEndian.PutUint64(b[hotSubAt:], h.hotSub)
	binary.LittleEndian.PutUint64(b[coldSubAt:], h.coldSub)
	binary.LittleEndian.PutUint64(b[checksumAt:], digest(b[:checksumAt]))
	return b
}

// decodeHeader decodes the fixed header hb (HeaderSize bytes) of a version
// 1 or 2 image and checks what needs no other field: magic, checksum,
// version, header size, reserved bytes and flags. A version 1 header is
// mapped onto the current layout: no sub-page maps, pages stored whole.
func decodeHeader(hb []byte) (header, error) {
	var h header
	if !bytes.Equal(hb[:8], magic[:]) {
		return h, ferr("header magic", 0, "got %q, want %q (not an Aquifer image)", hb[:8], magic[:])
	}
	if want, got := binary.LittleEndian.Uint64(hb[checksumAt:]), digest(hb[:checksumAt]); want != got {
		return h, &FormatError{"header", checksumAt, fmt.Errorf("%w: computed %#016x, stored %#016x", ErrDigest, got, want)}
	}
	h.version = binary.LittleEndian.Uint32(hb[8:])
	switch {
	case h.version > Version:
		return h, ferr("header version", 8, "image format version %d is newer than this build reads (versions %d to %d): it was written by a newer Aquifer; upgrade, or convert the snapshot again with this build", h.version, MinVersion, Version)
	case h.version < MinVersion:
		return h, ferr("header version", 8, "version %d not supported (this build reads versions %d to %d)", h.version, MinVersion, Version)
	}
	if v := binary.LittleEndian.Uint32(hb[12:]); v != HeaderSize {
		return h, ferr("header size", 12, "%d, want %d", v, HeaderSize)
	}
	h.pageSize = binary.LittleEndian.Uint32(hb[16:])
	h.flags = binary.LittleEndian.Uint32(hb[20:])
	h.memSize = binary.LittleEndian.Uint64(hb[24:])
	h.pages = binary.LittleEndian.Uint64(hb[32:])
	h.zeroPages = binary.LittleEndian.Uint64(hb[40:])
	h.hotPages = binary.LittleEndian.Uint64(hb[48:])
	h.coldPages = binary.LittleEndian.Uint64(hb[56:])
	h.regions = binary.LittleEndian.Uint32(hb[64:])
	h.extentPages = binary.LittleEndian.Uint32(hb[68:])
	h.runs = binary.LittleEndian.Uint64(hb[72:])
	h.extents = binary.LittleEndian.Uint64(hb[80:])
	h.coldTouched = binary.LittleEndian.Uint64(hb[88:])
	reserved := v2FieldsEnd
	if h.version == 1 {
		// Sections 0-4 as now, then the two segments; no sub-page maps.
		ids := [v1Sections]SectionID{SecRegions, SecPageMap, SecHotDigests, SecColdDigests, SecColdExtents, SecHotSegment, SecColdSegment}
		for i, id := range ids {
			o := sectionAt + i*24
			h.sections[id] = Section{binary.LittleEndian.Uint64(hb[o:]), binary.LittleEndian.Uint64(hb[o+8:]), binary.LittleEndian.Uint64(hb[o+16:])}
		}
		end := h.sections[SecColdExtents].Offset + h.sections[SecColdExtents].Length
		h.sections[SecHotSubMaps] = Section{Offset: end, Digest: digest(nil)}
		h.sections[SecColdSubMaps] = Section{Offset: end, Digest: digest(nil)}
		h.subPageSize, h.hotSub, h.coldSub = h.pageSize, h.hotPages, h.coldPages
		reserved = sectionAt + 24*v1Sections
	} else {
		for i := range h.sections {
			o := sectionAt + i*24
			h.sections[i] = Section{binary.LittleEndian.Uint64(hb[o:]), binary.LittleEndian.Uint64(hb[o+8:]), binary.LittleEndian.Uint64(hb[o+16:])}
		}
		h.subPageSize = binary.LittleEndian.Uint32(hb[subPageAt:])
		h.hotSub = binary.LittleEndian.Uint64(hb[hotSubAt:])
		h.coldSub = binary.LittleEndian.Uint64(hb[coldSubAt:])
		if !isZero(hb[subPageAt+4 : hotSubAt]) {
			return h, ferr("header reserved bytes", subPageAt+4, "not zero")
		}
	}
	if !isZero(hb[reserved:checksumAt]) {
		return h, ferr("header reserved bytes", uint64(reserved), "not zero")
	}
	if h.flags != 0 {
		return h, ferr("header flags", 20, "unknown flags %#x", h.flags)
	}
	return h, nil
}
