package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	var b [HeaderSize]byte
	PutHeader(b[:], Header{Op: OpRead, Len: 1234, ID: 1 << 40})
	h, err := ReadHeader(bytes.NewReader(b[:]), new([HeaderSize]byte))
	if err != nil || h.Op != OpRead || h.Len != 1234 || h.ID != 1<<40 {
		t.Fatalf("got %+v %v", h, err)
	}
	b[0] ^= 1
	if _, err := ParseHeader(b[:]); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("bad magic accepted: %v", err)
	}
	b[0] ^= 1
	b[3] = 200
	if _, err := ParseHeader(b[:]); !errors.Is(err, ErrBadOp) {
		t.Fatalf("bad op accepted: %v", err)
	}
}

func TestReadRoundTripAndLimits(t *testing.T) {
	in := &Read{Segment: 7, Ops: []ReadOp{{0, 4096}, {8192, 4096}}}
	body := EncodeRead(nil, in)
	var out Read
	if err := DecodeRead(body, &out); err != nil || out.Segment != 7 || len(out.Ops) != 2 || out.Ops[1] != in.Ops[1] {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	if err := DecodeRead(body[:len(body)-1], &out); err == nil {
		t.Fatal("truncated read accepted")
	}
	zero := EncodeRead(nil, &Read{Segment: 1, Ops: []ReadOp{{0, 0}}})
	if err := DecodeRead(zero, &out); err == nil {
		t.Fatal("zero-length op accepted")
	}
}

func TestPutRoundTrip(t *testing.T) {
	p := &Put{Segment: 3, PageSize: 4096, Digests: []uint64{1, 2}, Data: make([]byte, 8192)}
	body := append(EncodePutPrefix(nil, p), p.Data...)
	if uint64(len(body)) != PutBodyLen(p) {
		t.Fatalf("PutBodyLen %d, encoded %d", PutBodyLen(p), len(body))
	}
	q, err := DecodePut(body, 1<<20)
	if err != nil || q.Segment != 3 || q.Digests[1] != 2 || len(q.Data) != 8192 {
		t.Fatalf("%+v %v", q, err)
	}
	if _, err := DecodePut(body, 4096); err == nil {
		t.Fatal("segment over the node limit accepted")
	}
}

func TestAuthMACs(t *testing.T) {
	var n1, n2 [NonceSize]byte
	n1[0], n2[0] = 1, 2
	a := ClientMAC([]byte("s"), n1, n2, "pod")
	if a == ClientMAC([]byte("t"), n1, n2, "pod") || a == ClientMAC([]byte("s"), n1, n2, "other") || a == NodeMAC([]byte("s"), n1, n2, "pod") {
		t.Fatal("MAC does not bind secret, pod and role")
	}
	au := &Auth{ClientNonce: n2, MAC: a, Pod: "pod"}
	got, err := DecodeAuth(EncodeAuth(nil, au))
	if err != nil || *got != *au {
		t.Fatalf("%+v %v", got, err)
	}
}

// FuzzDecodeRequest feeds arbitrary frames (header + body) through the
// decoder the memory node uses. It must never panic, and anything it
// accepts must re-encode to the same body.
func FuzzDecodeRequest(f *testing.F) {
	frame := func(op Op, body []byte) []byte {
		b := make([]byte, HeaderSize, HeaderSize+len(body))
		PutHeader(b, Header{Op: op, Len: uint32(len(body)), ID: 9})
		return append(b, body...)
	}
	f.Add(frame(OpRead, EncodeRead(nil, &Read{Segment: 1, Ops: []ReadOp{{0, 4096}, {4096, 4096}}})))
	p := &Put{Segment: 2, PageSize: 512, Digests: []uint64{5}, Data: make([]byte, 512)}
	f.Add(frame(OpPut, append(EncodePutPrefix(nil, p), p.Data...)))
	f.Add(frame(OpAuth, EncodeAuth(nil, &Auth{Pod: "pod-a"})))
	f.Add(frame(OpDelete, EncodeU64(nil, 4)))
	f.Add(frame(OpStat, EncodeU64(nil, 4)))
	f.Add(frame(OpRead, []byte{1, 2, 3}))
	f.Add(frame(OpQPConnect, EncodeQPInfo(nil, &QPInfo{LID: 3, QPN: 0x1234, PSN: 99})))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(frame(OpList, EncodeListReq(nil, &ListReq{From: 1 << 40, Max: 100})))
	f.Add(frame(OpUsage, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		body := b[HeaderSize:]
		if uint64(h.Len) < uint64(len(body)) {
			body = body[:h.Len]
		}
		max, err := MaxRequestBody(h.Op, 1<<20)
		if err != nil || uint64(len(body)) > max {
			return
		}
		var rd Read
		v, err := DecodeRequest(h.Op, body, 1<<20, &rd)
		if err != nil {
			return
		}
		switch x := v.(type) {
		case *Read:
			if !bytes.Equal(EncodeRead(nil, x), body) {
				t.Fatal("read re-encodes differently")
			}
		case *Put:
			if !bytes.Equal(append(EncodePutPrefix(nil, x), x.Data...), body) {
				t.Fatal("put re-encodes differently")
			}
		case *Auth:
			if !bytes.Equal(EncodeAuth(nil, x), body) {
				t.Fatal("auth re-encodes differently")
			}
		case *QPInfo:
			if !bytes.Equal(EncodeQPInfo(nil, x), body) {
				t.Fatal("qp info re-encodes differently")
			}
		case *ListReq:
			if !bytes.Equal(EncodeListReq(nil, x), body) {
				t.Fatal("list request re-encodes differently")
			}
		}
	})
}
