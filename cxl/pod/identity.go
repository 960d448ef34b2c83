package pod

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/cxl"
)

// A region belongs to one pod of one control plane. Its identity record
// sits in the superblock page after the geometry (at identityOff): the pod's
// name, written when the region is formatted for a named pod or claimed by
// the first host that joins, and the control plane's cluster id, written by
// that first host. Once both are set the record never changes; a host of
// another pod or another control plane refuses the region.
//
//	[0]   magic "AQPODID1"
//	[8]   pod name, 64 bytes, zero padded
//	[72]  control-plane cluster id (0: not yet claimed)
//	[80]  claim time, unix ns
//	[88]  CRC-32C of [0, 88)
const (
	identityOff   = 512
	identityLen   = 92
	identityMagic = 0x31444944504f5141 // "AQPODID1" little-endian
	maxPodName    = 64
)

// Identity names the owner of a region.
type Identity struct {
	Pod       string
	ClusterID uint64
	Claimed   time.Time
}

func (id Identity) String() string {
	if id.ClusterID == 0 {
		return fmt.Sprintf("pod %q (not yet claimed by a control plane)", id.Pod)
	}
	return fmt.Sprintf("pod %q of control plane %#x (claimed %s)", id.Pod, id.ClusterID, id.Claimed.UTC().Format(time.RFC3339))
}

// ErrIdentityCorrupt means the identity record fails its checksum.
var ErrIdentityCorrupt = errors.New("region identity record is corrupt")

func encodeIdentity(id Identity) []byte {
	b := make([]byte, 2*cxl.LineSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], identityMagic)
	copy(b[8:8+maxPodName], id.Pod)
	le.PutUint64(b[72:], id.ClusterID)
	if !id.Claimed.IsZero() {
		le.PutUint64(b[80:], uint64(id.Claimed.UnixNano()))
	}
	le.PutUint32(b[88:], crc32.Checksum(b[:88], crcTable))
	return b
}

// ReadIdentity returns the region's identity; ok is false when none was
// ever written (a region formatted before identities existed, or by
// `aquifer cxl format` without a pod name).
func ReadIdentity(r cxl.Region) (id Identity, ok bool, err error) {
	if _, err := ReadGeometry(r); err != nil {
		return Identity{}, false, err
	}
	b := make([]byte, 2*cxl.LineSize)
	r.Invalidate(identityOff, int64(len(b)))
	r.FullFence()
	r.ReadAt(b, identityOff)
	le := binary.LittleEndian
	if le.Uint64(b[0:]) == 0 && le.Uint32(b[88:]) == 0 {
		return Identity{}, false, nil
	}
	if le.Uint64(b[0:]) != identityMagic || le.Uint32(b[88:]) != crc32.Checksum(b[:88], crcTable) {
		return Identity{}, false, ErrIdentityCorrupt
	}
	id.Pod = strings.TrimRight(string(b[8:8+maxPodName]), "\x00")
	id.ClusterID = le.Uint64(b[72:])
	if ns := le.Uint64(b[80:]); ns != 0 {
		id.Claimed = time.Unix(0, int64(ns))
	}
	return id, true, nil
}

func writeIdentity(r cxl.Region, id Identity) error {
	if len(id.Pod) == 0 || len(id.Pod) > maxPodName {
		return fmt.Errorf("pod name %q: want 1..%d bytes", id.Pod, maxPodName)
	}
	if !r.Writable(identityOff, 2*cxl.LineSize) {
		return fmt.Errorf("the superblock page is not writable in this mapping")
	}
	r.WriteAt(encodeIdentity(id), identityOff)
	r.Flush(identityOff, 2*cxl.LineSize)
	r.FullFence()
	return nil
}

// ErrOtherOwner is matched (errors.Is) by the error of a region that
// belongs to another pod or another control plane.
var ErrOtherOwner = errors.New("region belongs to another owner")

type ownerError struct{ msg string }

func (e *ownerError) Error() string        { return e.msg }
func (e *ownerError) Is(target error) bool { return target == ErrOtherOwner }

func otherOwner(format string, args ...any) error {
	return &ownerError{fmt.Sprintf(format, args...)}
}

// Claim binds the region to pod of the control plane clusterID, or checks
// that it is bound to them already. A region of another pod, or of the same
// pod name under another control plane, is refused with an error wrapping
// ErrOtherOwner that names the owner. Claim is run by every host before it
// joins; the first one writes the record. (Two hosts of different control
// planes claiming an unclaimed region in the same instant is not detected
// here; the write is re-read, which narrows that window to the time between
// two cache-line write-backs.)
func Claim(r cxl.Region, pod string, clusterID uint64) (Identity, error) {
	cur, ok, err := ReadIdentity(r)
	if err != nil {
		return Identity{}, err
	}
	if ok && cur.Pod != pod {
		return cur, otherOwner("the region belongs to %s, not to pod %q", cur, pod)
	}
	if ok && cur.ClusterID != 0 {
		if cur.ClusterID != clusterID {
			return cur, otherOwner("the region belongs to %s, and this host's control plane is %#x (another etcd cluster): give each pod its own region, or point this host at that control plane", cur, clusterID)
		}
		return cur, nil
	}
	id := Identity{Pod: pod, ClusterID: clusterID, Claimed: time.Now()}
	if err := writeIdentity(r, id); err != nil {
		return Identity{}, err
	}
	got, ok, err := ReadIdentity(r)
	if err != nil || !ok || got.Pod != pod || got.ClusterID != clusterID {
		return got, otherOwner("another host claimed the region at the same time: it belongs to %s", got)
	}
	return got, nil
}
