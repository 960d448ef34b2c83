package snapimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Format constants (docs/format.md). All integers are little-endian.
const (
	// Version is the image format version written and read by this build.
	Version = 1
	// HeaderSize is the fixed size of the header at offset 0.
	HeaderSize = 512
	// SegmentAlign is the alignment of the hot and cold segments in the
	// file, so each can be mmapped or copied page-aligned.
	SegmentAlign = 4096
	// DefaultExtentPages is the default maximum number of pages in a cold
	// extent (256 KiB with 4 KiB pages).
	DefaultExtentPages = 64

	regionSize = 24
	runSize    = 24
	digestSize = 8
	extentSize = 24
	sectionAt  = 96  // section table offset in the header
	checksumAt = 504 // header checksum offset
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
	SecHotSegment
	SecColdSegment
	numSections
)

var sectionNames = [numSections]string{"region table", "page map", "hot digest table", "cold digest table", "cold extent table", "hot segment", "cold segment"}

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
	pageSize    uint32
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
	binary.LittleEndian.PutUint64(b[checksumAt:], digest(b[:checksumAt]))
	return b
}

// decodeHeader decodes the fixed header hb (HeaderSize bytes) and checks
// what needs no other field: magic, checksum, version, header size,
// reserved bytes and flags.
func decodeHeader(hb []byte) (header, error) {
	var h header
	if !bytes.Equal(hb[:8], magic[:]) {
		return h, ferr("header magic", 0, "got %q, want %q (not an Aquifer image)", hb[:8], magic[:])
	}
	if want, got := binary.LittleEndian.Uint64(hb[checksumAt:]), digest(hb[:checksumAt]); want != got {
		return h, &FormatError{"header", checksumAt, fmt.Errorf("%w: computed %#016x, stored %#016x", ErrDigest, got, want)}
	}
	if v := binary.LittleEndian.Uint32(hb[8:]); v != Version {
		return h, ferr("header version", 8, "version %d not supported (this build reads %d)", v, Version)
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
	for i := range h.sections {
		o := sectionAt + i*24
		h.sections[i] = Section{binary.LittleEndian.Uint64(hb[o:]), binary.LittleEndian.Uint64(hb[o+8:]), binary.LittleEndian.Uint64(hb[o+16:])}
	}
	if !isZero(hb[sectionAt+24*int(numSections) : checksumAt]) {
		return h, ferr("header reserved bytes", sectionAt+24*uint64(numSections), "not zero")
	}
	if h.flags != 0 {
		return h, ferr("header flags", 20, "unknown flags %#x", h.flags)
	}
	return h, nil
}
