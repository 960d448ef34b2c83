package wset

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cespare/xxhash/v2"
)

// Fingerprint identifies the content of a snapshot memory file: its size and
// the xxhash64 (github.com/cespare/xxhash/v2, seed 0) of all its bytes, holes
// read as zeros. Two memory files with the same fingerprint hold the same
// bytes for every practical purpose; the same `xxhsum -H64` of the file
// gives XXH64.
type Fingerprint struct {
	// Size is the memory file's size in bytes.
	Size uint64
	// XXH64 is the xxhash64 of the file's content.
	XXH64 uint64
}

func (f Fingerprint) String() string {
	return fmt.Sprintf("xxh64 %016x over %d bytes", f.XXH64, f.Size)
}

// Hasher computes a Fingerprint from the bytes written to it, in order.
type Hasher struct {
	d *xxhash.Digest
	n uint64
}

// NewHasher returns an empty Hasher.
func NewHasher() *Hasher { return &Hasher{d: xxhash.New()} }

// Write adds b to the content; it never fails.
func (h *Hasher) Write(b []byte) (int, error) {
	h.d.Write(b)
	h.n += uint64(len(b))
	return len(b), nil
}

// Fingerprint is the fingerprint of the bytes written so far.
func (h *Hasher) Fingerprint() Fingerprint { return Fingerprint{Size: h.n, XXH64: h.d.Sum64()} }

// FingerprintFile reads the memory file at path once, sequentially, and
// returns its fingerprint.
func FingerprintFile(path string) (Fingerprint, error) {
	f, err := os.Open(path)
	if err != nil {
		return Fingerprint{}, fmt.Errorf("fingerprint of the memory: %w", err)
	}
	defer f.Close()
	h := NewHasher()
	if _, err := io.CopyBuffer(h, f, make([]byte, 4<<20)); err != nil {
		return Fingerprint{}, fmt.Errorf("fingerprint of the memory: reading %s: %w", path, err)
	}
	return h.Fingerprint(), nil
}

// Bind records that t was recorded from the memory whose fingerprint is fp.
// The trace's memory size, when known, must be fp's; when unknown it
// becomes fp's.
func (t *Trace) Bind(fp Fingerprint) error {
	if fp.Size == 0 {
		return errors.New("cannot bind a working set to an empty memory")
	}
	if t.MemSize != 0 && t.MemSize != fp.Size {
		return fmt.Errorf("working set %q is for a memory of %d bytes, the memory file has %d", t.Source, t.MemSize, fp.Size)
	}
	t.MemSize = fp.Size
	t.Memory = &Fingerprint{Size: fp.Size, XXH64: fp.XXH64}
	return nil
}

// Binding is how a working set relates to a memory file.
type Binding uint8

const (
	// Unbound: the working set does not say which memory it was recorded
	// from (written before format version 2, or by a tool that did not
	// know the memory).
	Unbound Binding = iota
	// Bound: recorded from this memory.
	Bound
	// Foreign: recorded from another memory.
	Foreign
)

func (b Binding) String() string {
	switch b {
	case Bound:
		return "bound"
	case Foreign:
		return "foreign"
	}
	return "unbound"
}

// BindingTo says whether t was recorded from the memory mem.
func (t *Trace) BindingTo(mem Fingerprint) Binding {
	switch {
	case t.Memory == nil:
		return Unbound
	case *t.Memory == mem:
		return Bound
	}
	return Foreign
}

// AllowForeignFlag is the command-line flag that makes the commands that
// use a working set with a memory file accept one recorded from other
// memory.
const AllowForeignFlag = "--allow-foreign-ws"

// ForeignError is returned by CheckMemory for a working set recorded from
// another memory than the one it is used with.
type ForeignError struct {
	// WS and Mem name the working set and the memory file.
	WS, Mem string
	// Recorded is the fingerprint in the working set, Memory the memory
	// file's.
	Recorded, Memory Fingerprint
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("working set %s was recorded from another memory (%s) than %s (%s): "+
		"record it from this snapshot (aquifer handle --mem %s --record FILE), or pass %s to use it anyway",
		e.WS, e.Recorded, e.Mem, e.Memory, e.Mem, AllowForeignFlag)
}

// CheckMemory is the one check of a working set against the memory file it
// is about to be used with (convert, the baselines, hot-set analysis).
// ws and mem name them in messages, fp is the memory's fingerprint. A
// working set recorded from this memory passes silently; one recorded from
// another memory is a *ForeignError unless allowForeign, then a warning;
// an unbound one is a warning. The warning (if any) is for the user.
func CheckMemory(t *Trace, ws, mem string, fp Fingerprint, allowForeign bool) (warning string, err error) {
	switch t.BindingTo(fp) {
	case Bound:
		return "", nil
	case Foreign:
		e := &ForeignError{WS: ws, Mem: mem, Recorded: *t.Memory, Memory: fp}
		if !allowForeign {
			return "", e
		}
		return fmt.Sprintf("working set %s was recorded from another memory (%s) than %s (%s); used anyway (%s)",
			ws, e.Recorded, mem, fp, AllowForeignFlag), nil
	}
	return fmt.Sprintf("working set %s does not say which memory it was recorded from (an older format, or written by a tool that did not know the memory): "+
		"it cannot be checked against %s (%s); record it again, or bind it with aquifer ws bind --mem %s %s",
		ws, mem, fp, mem, ws), nil
}
