package wire

import (
	"bytes"
	"strings"
	"testing"
)

func TestListRoundTripAndLimits(t *testing.T) {
	in := &ListResp{More: true, Next: 43, Entries: []ListEntry{
		{ID: 7, Len: 8192, PutNanos: 1e18, PageSize: 4096, Flags: EntryReferenced, Writer: "host pod1/host2"},
		{ID: 42, Len: 4096, PageSize: 4096},
	}}
	b := EncodeListResp(nil, in)
	out, err := DecodeListResp(b)
	if err != nil || !out.More || out.Next != 43 || len(out.Entries) != 2 || out.Entries[0] != in.Entries[0] || out.Entries[1] != in.Entries[1] {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	for i := range len(b) {
		if _, err := DecodeListResp(b[:i]); err == nil {
			t.Fatalf("list response truncated to %d of %d bytes accepted", i, len(b))
		}
	}
	if _, err := DecodeListResp(append(bytes.Clone(b), 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	// A writer longer than an identity may be is cut on encoding.
	long := EncodeListResp(nil, &ListResp{Entries: []ListEntry{{ID: 1, Writer: strings.Repeat("w", 300)}}})
	if got, err := DecodeListResp(long); err != nil || len(got.Entries[0].Writer) != MaxIdentity {
		t.Fatalf("long writer: %v", err)
	}
	// The largest page fits the bound the client reads with.
	full := &ListResp{}
	for i := range MaxListPage {
		full.Entries = append(full.Entries, ListEntry{ID: uint64(i), Writer: strings.Repeat("x", MaxIdentity)})
	}
	if n := len(EncodeListResp(nil, full)); n != MaxListResp {
		t.Fatalf("full page is %d bytes, MaxListResp %d", n, MaxListResp)
	}
	u := &UsageResp{Capacity: 1 << 30, Used: 5, Segments: 1, Flags: UsageAuthorizing}
	if got, err := DecodeUsageResp(EncodeUsageResp(nil, u)); err != nil || *got != *u {
		t.Fatalf("usage: %+v %v", got, err)
	}
	if _, err := DecodeUsageResp(EncodeUsageResp(nil, &UsageResp{Flags: 1 << 9})); err == nil {
		t.Fatal("unknown usage flag accepted")
	}
	if r, err := DecodeListReq(EncodeListReq(nil, &ListReq{From: 9, Max: 3})); err != nil || r.From != 9 || r.Max != 3 {
		t.Fatalf("list request: %+v %v", r, err)
	}
}

// FuzzDecodeResponse feeds arbitrary frames through the decoders a client
// applies to what a memory node sends back (a node is not trusted to be
// well-formed). They must never panic, and what they accept must re-encode
// to the same body.
func FuzzDecodeResponse(f *testing.F) {
	frame := func(op Op, body []byte) []byte {
		b := make([]byte, HeaderSize, HeaderSize+len(body))
		PutHeader(b, Header{Op: op, Len: uint32(len(body)), ID: 3})
		return append(b, body...)
	}
	f.Add(frame(OpListResp, EncodeListResp(nil, &ListResp{More: true, Next: 9, Entries: []ListEntry{{ID: 8, Len: 4096, PageSize: 4096, Writer: "host p/h"}}})))
	f.Add(frame(OpListResp, EncodeListResp(nil, &ListResp{})))
	f.Add(frame(OpUsageResp, EncodeUsageResp(nil, &UsageResp{Capacity: 10, Used: 3, Segments: 1, Flags: 3})))
	f.Add(frame(OpPutOK, EncodePutOK(nil, &PutOK{Addr: 1, RKey: 2, Existed: true})))
	f.Add(frame(OpStatResp, EncodeStatResp(nil, &StatResp{PageSize: 4096, Digests: []uint64{1, 2}})))
	f.Add(frame(OpHello, EncodeHello(nil, &Hello{Node: "memnode1"})))
	f.Add(frame(OpError, EncodeError(nil, CodeForbidden, "no")))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		body := b[HeaderSize:]
		if uint64(h.Len) < uint64(len(body)) {
			body = body[:h.Len]
		}
		v, err := DecodeResponse(h.Op, body)
		if err != nil {
			return
		}
		var re []byte
		switch x := v.(type) {
		case *ListResp:
			re = EncodeListResp(nil, x)
		case *UsageResp:
			re = EncodeUsageResp(nil, x)
		case *StatResp:
			re = EncodeStatResp(nil, x)
		case *Hello:
			re = EncodeHello(nil, x)
		default:
			return // PutOK keeps only its flag bit; errors are lenient by design
		}
		if !bytes.Equal(re, body) {
			t.Fatalf("%s re-encodes differently", h.Op)
		}
	})
}
