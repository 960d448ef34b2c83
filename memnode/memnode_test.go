package memnode

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/rdma/wire"
	"github.com/cespare/xxhash/v2"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func mkPut(id uint64, pages int, fill byte) *wire.Put {
	p := &wire.Put{Segment: id, PageSize: 4096, Data: bytes.Repeat([]byte{fill}, pages*4096)}
	for i := range pages {
		p.Data[i*4096] = byte(i) // distinct pages
		p.Digests = append(p.Digests, xxhash.Sum64(p.Data[i*4096:(i+1)*4096]))
	}
	return p
}

func TestPersistAndRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(8<<20, 4<<20, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= 3; id++ {
		if _, _, err := s.Put(mkPut(id, 8, byte(id))); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	// A crash mid-write leaves only a temp file; damage one segment's data
	// and another's header.
	os.WriteFile(filepath.Join(dir, ".tmp-seg-123"), []byte("partial"), 0o600)
	damage := func(id uint64, off int64) {
		f, err := os.OpenFile(filepath.Join(dir, "seg-"+strings.Repeat("0", 15)+string(rune('0'+id))+".aqs"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := []byte{0}
		f.ReadAt(b, off)
		b[0] ^= 0xff
		f.WriteAt(b, off)
	}
	damage(2, 5000) // data
	damage(3, 30)   // digests (header checksum)
	var logBuf bytes.Buffer
	s, err = OpenStore(8<<20, 4<<20, dir, slog.New(slog.NewTextHandler(&logBuf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make([]byte, 4096)
	if err := s.ReadAt(1, 4096, got); err != nil || !bytes.Equal(got, mkPut(1, 8, 1).Data[4096:8192]) {
		t.Fatalf("segment 1 after restart: %v", err)
	}
	for _, id := range []uint64{2, 3} {
		if err := s.ReadAt(id, 0, got); !errors.Is(err, ErrNotFound) {
			t.Fatalf("damaged segment %d served: %v", id, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-seg-123")); !os.IsNotExist(err) {
		t.Fatal("temp file left behind")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.corrupt")); len(m) != 2 {
		t.Fatalf("want 2 quarantined files, got %v", m)
	}
	if !strings.Contains(logBuf.String(), "damaged") {
		t.Fatalf("damage not logged: %s", logBuf.String())
	}
	if err := s.ReadAt(1, 8*4096-10, got); !errors.Is(err, ErrOutOfBounds) {
		t.Fatalf("out-of-bounds read: %v", err)
	}
}

func TestCapacityImmutabilityDelete(t *testing.T) {
	s, err := OpenStore(1<<20, 1<<20, "", quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for id := uint64(1); id <= 4; id++ {
		if _, _, err := s.Put(mkPut(id, 64, 1)); err != nil {
			t.Fatalf("put %d: %v", id, err)
		}
	}
	if _, _, err := s.Put(mkPut(5, 64, 1)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("over capacity: %v", err)
	}
	if _, existed, err := s.Put(mkPut(1, 64, 1)); err != nil || !existed {
		t.Fatalf("identical re-put: %v %v", existed, err)
	}
	if _, _, err := s.Put(mkPut(1, 64, 2)); !errors.Is(err, ErrExists) {
		t.Fatalf("conflicting re-put: %v", err)
	}
	if err := s.Delete(2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Put(mkPut(5, 64, 1)); err != nil {
		t.Fatalf("put after delete (space reuse): %v", err)
	}
	if s.Used() != 1<<20 || s.Segments() != 4 {
		t.Fatalf("used %d segments %d", s.Used(), s.Segments())
	}
	bad := mkPut(9, 1, 1)
	bad.Data[7] ^= 1
	if _, _, err := s.Put(bad); !errors.Is(err, ErrBadDigest) {
		t.Fatalf("put with wrong digest: %v", err)
	}
}

// FuzzServeConn drives a real server connection: a valid admission, then
// arbitrary bytes. The node must not panic, must answer or close, and must
// still serve a well-formed read on a fresh connection afterwards.
func FuzzServeConn(f *testing.F) {
	secret := []byte("fuzz-secret-0123456789")
	n, err := New(Config{Capacity: 1 << 20, Secret: secret, Logger: quiet, Name: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	defer n.Close()
	if _, _, err := n.store.Put(mkPut(1, 2, 3)); err != nil {
		f.Fatal(err)
	}
	frame := func(op wire.Op, body []byte) []byte {
		b := make([]byte, wire.HeaderSize, wire.HeaderSize+len(body))
		wire.PutHeader(b, wire.Header{Op: op, Len: uint32(len(body)), ID: 3})
		return append(b, body...)
	}
	f.Add(frame(wire.OpRead, wire.EncodeRead(nil, &wire.Read{Segment: 1, Ops: []wire.ReadOp{{Off: 0, Len: 4096}}})))
	f.Add(frame(wire.OpRead, wire.EncodeRead(nil, &wire.Read{Segment: 1, Ops: []wire.ReadOp{{Off: 8000, Len: 4096}}})))
	f.Add(frame(wire.OpStat, wire.EncodeU64(nil, 1)))
	f.Add(frame(wire.OpDelete, wire.EncodeU64(nil, 7)))
	f.Add(frame(wire.OpList, wire.EncodeListReq(nil, &wire.ListReq{From: 0, Max: 2})))
	f.Add(frame(wire.OpUsage, nil))
	f.Add(append(frame(wire.OpRead, []byte{1}), 0xff, 0xff))
	f.Add([]byte{0x1f, 0xa7, 1, 5, 0xff, 0xff, 0xff, 0x7f})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	go n.Serve(l)
	serveOnce := func(t *testing.T, payload []byte) []byte {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		cl := c.(*net.TCPConn)
		defer cl.Close()
		cl.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(cl)
		var hb [wire.HeaderSize]byte
		h, err := wire.ReadHeader(br, &hb)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, h.Len)
		io.ReadFull(br, body)
		hello, _ := wire.DecodeHello(body)
		a := &wire.Auth{Pod: "fuzz"}
		a.MAC = wire.ClientMAC(secret, hello.Nonce, a.ClientNonce, a.Pod)
		var out bytes.Buffer
		rdone := make(chan struct{})
		go func() { io.Copy(&out, br); close(rdone) }()
		cl.Write(frame(wire.OpAuth, wire.EncodeAuth(nil, a)))
		cl.Write(payload)
		cl.CloseWrite()
		<-rdone
		return out.Bytes()
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		serveOnce(t, payload)
		n.store.Put(mkPut(1, 2, 3)) // the input may have deleted it
		ok := serveOnce(t, frame(wire.OpRead, wire.EncodeRead(nil, &wire.Read{Segment: 1, Ops: []wire.ReadOp{{Off: 4096, Len: 4096}}})))
		// auth-ok frame (16+32) then read-resp header (16+8) and the page
		if len(ok) != wire.HeaderSize+wire.MACSize+wire.HeaderSize+8+4096 {
			t.Fatalf("node stopped serving after fuzz input: %d bytes back", len(ok))
		}
	})
}
