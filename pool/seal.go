package pool

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/aquifer-pool/aquifer/control"
)

// Catalog entries are sealed: every field of a control.Snapshot that
// decides what a VM is served — the name, the image header (where the
// metadata object lives on the memory nodes, and its SHA-256), the CXL
// placement, the segment placements, the sizes and the publish time — is
// covered by an HMAC-SHA256 under a key derived from the pod secret, which
// the control plane does not hold. The pool refuses an entry that does not
// verify before anything of it is used, so an entry rewritten in etcd (by
// anyone holding the cluster's etcd credentials), swapped with another
// name's, or written before entries were sealed never feeds a guest. The
// metadata object read back from the memory nodes must match the SHA-256
// in the sealed header, which binds the page digests and the hot and cold
// object descriptors it carries.

// sealInfo labels the catalog key's derivation from the pod secret; the
// secret itself is only ever used raw for memory-node admission.
const sealInfo = "aquifer/pool: catalog entry seal v1"

// sealPrefix versions the seal's format.
const sealPrefix = "v1:"

// ErrUnsealed marks a catalog entry that failed authentication.
var ErrUnsealed = errors.New("catalog entry failed authentication")

// CatalogKey derives the key that seals catalog entries from the pod's
// shared secret (HKDF-SHA256 with a label of its own).
func CatalogKey(podSecret []byte) ([]byte, error) {
	if len(podSecret) < 16 {
		return nil, fmt.Errorf("the pod secret must be at least 16 bytes (got %d)", len(podSecret))
	}
	return hkdf.Key(sha256.New, podSecret, nil, sealInfo, 32)
}

// sealOf computes the seal of s under key.
func sealOf(key []byte, s *control.Snapshot) string {
	m := hmac.New(sha256.New, key)
	m.Write(canonical(s))
	return sealPrefix + hex.EncodeToString(m.Sum(nil))
}

// seal sets s.Seal.
func (p *Pool) seal(s *control.Snapshot) { s.Seal = sealOf(p.cfg.CatalogKey, s) }

// verify says whether s is an entry this pod sealed, as it was sealed.
func (p *Pool) verify(s *control.Snapshot) error {
	republish := fmt.Sprintf("refusing to serve it; republish it (aquifer pool rm %s, then aquifer publish IMAGE --name %s)", s.Name, s.Name)
	if s.Seal == "" {
		p.log.Error("refused an unsealed catalog entry", "snapshot", s.Name)
		return fmt.Errorf("snapshot %q: %w: the entry has no seal (published before catalog entries were authenticated, or not written by an Aquifer daemon); %s", s.Name, ErrUnsealed, republish)
	}
	want := sealOf(p.cfg.CatalogKey, s)
	if !strings.HasPrefix(s.Seal, sealPrefix) || !hmac.Equal([]byte(s.Seal), []byte(want)) {
		p.log.Error("refused a catalog entry that does not verify: changed outside Aquifer, swapped with another entry, or sealed with another pod secret", "snapshot", s.Name)
		return fmt.Errorf("snapshot %q: %w: its seal does not match its content under this pod's secret (the entry was changed outside Aquifer, swapped with another snapshot's, or sealed with another pod secret); %s", s.Name, ErrUnsealed, republish)
	}
	return nil
}

// reseal applies change to s and seals the result, unless s did not
// verify: an entry that does not verify is changed but never sealed, so
// rewriting it can never launder a forged one.
func (p *Pool) reseal(s *control.Snapshot, change func(*control.Snapshot)) {
	ok := p.verify(s) == nil
	change(s)
	if ok {
		p.seal(s)
	}
}

// metaDigest is the SHA-256 of a metadata object, recorded in the sealed
// header.
func metaDigest(b []byte) string {
	d := sha256.Sum256(b)
	return hex.EncodeToString(d[:])
}

// checkMeta verifies a metadata object read back from the memory nodes
// against the sealed header.
func checkMeta(name string, h header, b []byte) error {
	if h.MetaSHA256 == "" {
		return fmt.Errorf("snapshot %q: %w: its header records no metadata digest; republish it", name, ErrUnsealed)
	}
	if uint64(len(b)) < h.MetaLen || h.Meta == nil || uint64(len(b)) < h.Meta.Len {
		return fmt.Errorf("snapshot %q: metadata object of %d bytes is shorter than its header says", name, len(b))
	}
	if got := metaDigest(b[:h.Meta.Len]); got != h.MetaSHA256 {
		return fmt.Errorf("snapshot %q: %w: the metadata object the memory nodes returned (SHA-256 %s) is not the one published (%s)", name, ErrUnsealed, got, h.MetaSHA256)
	}
	return nil
}

// canonical is the byte string a seal covers: a label, then every field
// of the entry but Seal and Rev, each length-prefixed or fixed-size, in a
// fixed order (the header as compact JSON). TestSealCoversEveryField fails
// when control.Snapshot gains a field this does not cover.
func canonical(s *control.Snapshot) []byte {
	var b bytes.Buffer
	str := func(v string) {
		binary.Write(&b, binary.BigEndian, uint32(len(v)))
		b.WriteString(v)
	}
	u64 := func(v uint64) { binary.Write(&b, binary.BigEndian, v) }
	str("aquifer catalog entry v2")
	str(s.Name)
	var hdr bytes.Buffer
	if err := json.Compact(&hdr, s.Header); err != nil {
		hdr.Reset()
		hdr.Write(s.Header) // not JSON: covered as it is (and refused when read)
	}
	str(hdr.String())
	u64(uint64(s.Published.UnixNano()))
	u64(s.HotBytes)
	u64(s.ColdBytes)
	u64(uint64(len(s.Segments)))
	for _, sp := range s.Segments {
		str(sp.ID)
		u64(uint64(len(sp.Nodes)))
		for _, n := range sp.Nodes {
			str(n)
		}
		u64(sp.Len)
		u64(sp.Digest)
		str(sp.Kind)
	}
	return b.Bytes()
}

// Placements (a pod's record of where a snapshot's hot set sits in its
// region) are sealed with the same key, under their own label, over the
// snapshot name, the pod, the version placed and every extent.

func placementSeal(key []byte, pl *control.Placement) string {
	var b bytes.Buffer
	str := func(v string) {
		binary.Write(&b, binary.BigEndian, uint32(len(v)))
		b.WriteString(v)
	}
	u64 := func(v uint64) { binary.Write(&b, binary.BigEndian, v) }
	str("aquifer placement v1")
	str(pl.Name)
	str(pl.Pod)
	u64(uint64(pl.Published.UnixNano()))
	u64(uint64(len(pl.Extents)))
	for _, x := range pl.Extents {
		u64(uint64(int64(x.Descriptor)))
		u64(x.Gen)
		u64(x.Token)
		u64(x.Len)
	}
	m := hmac.New(sha256.New, key)
	m.Write(b.Bytes())
	return sealPrefix + hex.EncodeToString(m.Sum(nil))
}

func (p *Pool) sealPlacement(pl *control.Placement) { pl.Seal = placementSeal(p.cfg.CatalogKey, pl) }

// verifyPlacement says whether pl is a placement this cluster sealed for
// this pod.
func (p *Pool) verifyPlacement(pl *control.Placement) error {
	if pl.Seal == "" || !hmac.Equal([]byte(pl.Seal), []byte(placementSeal(p.cfg.CatalogKey, pl))) || pl.Pod != p.podName() {
		p.log.Error("refused a CXL placement that does not verify (changed outside Aquifer or moved from another pod); its hot set is read from the RDMA copy", "snapshot", pl.Name, "pod", pl.Pod)
		return fmt.Errorf("placement of %q: %w: it does not verify under this pod's secret", pl.Name, ErrUnsealed)
	}
	return nil
}
