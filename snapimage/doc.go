// Package snapimage owns the Aquifer image format: a Firecracker guest
// memory file re-laid out by hotness so that zero pages cost nothing, the
// hot working set is one contiguous segment in first-touch order (one
// sequential pre-install from the CXL tier), and cold pages sit in a second
// segment grouped into extents that are read together (batched RDMA reads).
//
// An image is one file of separately addressable, separately checksummed
// sections (docs/format.md, "Aquifer image"):
//
//	header | regions | page map | hot digests | cold digests | cold extents |
//	hot sub-page maps | cold sub-page maps | hot segment | cold segment
//
// An image records its guest's page size: 4 KiB, or 2 MiB for a
// hugetlbfs-backed guest. Zero, hot and cold are decided per page; the
// segments are made of 4 KiB sub-pages, and a 2 MiB page is stored as its
// non-zero sub-pages only, with a bitmap saying which (a zero 4 KiB page is
// never stored; readers rebuild it). Format version 2; version 1 images
// (pages stored whole) are still read.
//
// The metadata sections (header to the sub-page maps) are small: a 4 GiB VM's
// page map is a run-length list, not one entry per page. The two segments
// are page aligned and may be copied to different tiers; the reader API
// (Image) classifies any page as zero, hot index or cold index and reads and
// verifies a hot page, cold page or cold extent from segment bytes supplied
// by any source (io.ReaderAt), so a pager never needs the image file itself.
//
// Convert builds an image from a memory file and a wset.Trace, and refuses a
// trace recorded from another memory (wset.CheckMemory, with the memory's
// fingerprint taken during its classification pass) unless told; Verify
// rebuilds every page of an image and compares it byte for byte with the
// original memory file.
//
// This package must not import serving packages (handler, uffd, tiers); it
// uses pagestat for zero detection, wset for traces and offheap to map the
// memory file.
package snapimage
