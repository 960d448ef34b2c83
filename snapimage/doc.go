// Package snapimage owns the Aquifer image format: a Firecracker guest
// memory file re-laid out by hotness so that zero pages cost nothing, the
// hot working set is one contiguous segment in first-touch order (one
// sequential pre-install from the CXL tier), and cold pages sit in a second
// segment grouped into extents that are read together (batched RDMA reads).
//
// An image is one file of separately addressable, separately checksummed
// sections (docs/format.md, "Aquifer image"):
//
//	header | regions | page map | hot digests | cold digests | cold extents | hot segment | cold segment
//
// The metadata sections (header to cold extents) are small: a 4 GiB VM's
// page map is a run-length list, not one entry per page. The two segments
// are page aligned and may be copied to different tiers; the reader API
// (Image) classifies any page as zero, hot index or cold index and reads and
// verifies a hot page, cold page or cold extent from segment bytes supplied
// by any source (io.ReaderAt), so a pager never needs the image file itself.
//
// Convert builds an image from a memory file and a wset.Trace; Verify
// rebuilds every page of an image and compares it byte for byte with the
// original memory file.
//
// This package must not import serving packages (handler, uffd, tiers); it
// uses pagestat for zero detection, wset for traces and offheap to map the
// memory file.
package snapimage
