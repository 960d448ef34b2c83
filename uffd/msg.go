package uffd

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Msg is one decoded uffd_msg.
type Msg struct {
	Event uint8
	// PAGEFAULT: Flags (bit 0 = write), Address (not page aligned), Ptid.
	Flags   uint64
	Address uint64
	Ptid    uint32
	// REMOVE / UNMAP: [Start, End).
	Start, End uint64
	// FORK: the new uffd; REMAP: From, To, Len (never enabled by Firecracker).
	Raw [MsgSize]byte
}

// Write reports whether a PAGEFAULT was caused by a write access.
func (m *Msg) Write() bool { return m.Flags&PagefaultFlagWrite != 0 }

func (m *Msg) String() string {
	switch m.Event {
	case EventPagefault:
		rw := "read"
		if m.Write() {
			rw = "write"
		}
		return fmt.Sprintf("pagefault %s %#x", rw, m.Address)
	case EventRemove:
		return fmt.Sprintf("remove [%#x,%#x)", m.Start, m.End)
	case EventUnmap:
		return fmt.Sprintf("unmap [%#x,%#x)", m.Start, m.End)
	default:
		return fmt.Sprintf("event %#x", m.Event)
	}
}

// DecodeMsg decodes a 32-byte uffd_msg.
func DecodeMsg(b []byte) (Msg, error) {
	var m Msg
	if len(b) < MsgSize {
		return m, fmt.Errorf("short message of %d bytes", len(b))
	}
	copy(m.Raw[:], b)
	m.Event = b[0]
	switch m.Event {
	case EventPagefault:
		m.Flags = binary.LittleEndian.Uint64(b[8:])
		m.Address = binary.LittleEndian.Uint64(b[16:])
		m.Ptid = binary.LittleEndian.Uint32(b[24:])
	case EventRemove, EventUnmap:
		m.Start = binary.LittleEndian.Uint64(b[8:])
		m.End = binary.LittleEndian.Uint64(b[16:])
	}
	return m, nil
}

// ReadMsgs reads as many pending events as fit in buf (a multiple of
// MsgSize bytes, off or on the heap) and decodes them into out. It never
// blocks on a non-blocking uffd: with nothing pending it returns 0, nil.
func (f *FD) ReadMsgs(buf []byte, out []Msg) ([]Msg, error) {
	n := len(buf) / MsgSize * MsgSize
	if n == 0 {
		return out, fmt.Errorf("read buffer smaller than one message")
	}
	for {
		r, err := unix.Read(f.fd, buf[:n])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read events: %w", err)
		}
		if r%MsgSize != 0 {
			return out, fmt.Errorf("read %d bytes, not a multiple of %d", r, MsgSize)
		}
		for off := 0; off < r; off += MsgSize {
			m, _ := DecodeMsg(buf[off : off+MsgSize])
			out = append(out, m)
		}
		return out, nil
	}
}
