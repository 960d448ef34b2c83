package snapimage

import (
	"encoding/binary"
	"fmt"
)

// ID identifies the image's content: its header checksum, which covers
// the header and, through each section's digest, the region table, the
// page map, every page's digest and both segments. Two images with the
// same ID serve the same bytes; a restarted pager compares it with the ID
// it recorded before serving a VM again.
func (im *Image) ID() string {
	b := im.hdr.encode()
	return fmt.Sprintf("%016x", binary.LittleEndian.Uint64(b[checksumAt:]))
}
