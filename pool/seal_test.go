package pool

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/rdma"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testPool(t *testing.T, secret string) *Pool {
	t.Helper()
	k, err := CatalogKey([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return &Pool{cfg: Config{CatalogKey: k}, log: quiet}
}

// sample is an entry with every optional part present.
func sample(name string) *control.Snapshot {
	h, _ := json.Marshal(header{Version: 1, Meta: &rdma.Object{PageSize: 4096, ChunkPages: 4, Len: 8192,
		Segs: []*rdma.SegmentInfo{{}}}, MetaLen: 4096, ImageLen: 1 << 20, Pages: 256, Zero: 200, HotPages: 6,
		Cold: 50, PageSize: 4096, MetaSHA256: strings.Repeat("ab", 32)})
	return &control.Snapshot{Name: name, Header: h, HotBytes: 6 * 4096, ColdBytes: 50 * 4096,
		Published: time.Unix(1700000000, 123456789),
		Segments:  []control.SegmentPlacement{{ID: "s1", Nodes: []string{"a:1", "b:2"}, Len: 4096, Digest: 5, Kind: "cold"}}}
}

func clone(t *testing.T, s *control.Snapshot) *control.Snapshot {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var c control.Snapshot
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

// mutators returns, for every leaf field reachable from v (its type walked
// by reflection), a named change of that field in a value of the same
// shape, plus structural changes (a pointer set to nil, an element added).
func mutators(typ reflect.Type, path string, at func(reflect.Value) reflect.Value) map[string]func(reflect.Value) {
	out := map[string]func(reflect.Value){}
	add := func(p string, f func(reflect.Value)) { out[p] = f }
	switch {
	case typ == reflect.TypeOf(time.Time{}):
		add(path, func(root reflect.Value) {
			f := at(root)
			f.Set(reflect.ValueOf(f.Interface().(time.Time).Add(time.Nanosecond)))
		})
	case typ == reflect.TypeOf(json.RawMessage{}):
		add(path, func(root reflect.Value) {
			f := at(root)
			var h map[string]any
			json.Unmarshal(f.Bytes(), &h)
			h["pages"] = 257.0
			b, _ := json.Marshal(h)
			f.SetBytes(b)
		})
	default:
		switch typ.Kind() {
		case reflect.String:
			add(path, func(root reflect.Value) { f := at(root); f.SetString(f.String() + "x") })
		case reflect.Int, reflect.Int64, reflect.Int32:
			add(path, func(root reflect.Value) { f := at(root); f.SetInt(f.Int() + 1) })
		case reflect.Uint, reflect.Uint64, reflect.Uint32:
			add(path, func(root reflect.Value) { f := at(root); f.SetUint(f.Uint() + 1) })
		case reflect.Pointer:
			add(path+"=nil", func(root reflect.Value) { f := at(root); f.Set(reflect.Zero(typ)) })
			for k, v := range mutators(typ.Elem(), path, func(r reflect.Value) reflect.Value { return at(r).Elem() }) {
				out[k] = v
			}
		case reflect.Slice:
			add(path+"+elem", func(root reflect.Value) { f := at(root); f.Set(reflect.Append(f, f.Index(0))) })
			for k, v := range mutators(typ.Elem(), path+"[0]", func(r reflect.Value) reflect.Value { return at(r).Index(0) }) {
				out[k] = v
			}
		case reflect.Struct:
			for i := range typ.NumField() {
				sf := typ.Field(i)
				if path == "" && (sf.Name == "Seal" || sf.Name == "Rev") {
					continue // the seal itself; the read revision (not stored)
				}
				for k, v := range mutators(sf.Type, path+"."+sf.Name, func(r reflect.Value) reflect.Value { return at(r).Field(i) }) {
					out[k] = v
				}
			}
		default:
			add(path, nil) // a kind this test cannot change: fail below
		}
	}
	return out
}

// TestSealCoversEveryField changes each field of a catalog entry in turn
// (found by reflection, so a field added to control.Snapshot later is
// covered by this test too) and checks that the sealed entry then fails
// verification.
func TestSealCoversEveryField(t *testing.T) {
	p := testPool(t, "pod-secret-0123456789abcdef")
	base := sample("fn")
	p.seal(base)
	if err := p.verify(base); err != nil {
		t.Fatal(err)
	}
	muts := mutators(reflect.TypeOf(*base), "", func(r reflect.Value) reflect.Value { return r })
	if len(muts) < 12 {
		t.Fatalf("only %d mutations: the walk is broken", len(muts))
	}
	for name, mut := range muts {
		if mut == nil {
			t.Errorf("field %s has a kind this test cannot change: extend mutators and canonical", name)
			continue
		}
		c := clone(t, base)
		mut(reflect.ValueOf(c).Elem())
		if reflect.DeepEqual(c, base) {
			t.Errorf("mutation %s changed nothing", name)
			continue
		}
		if err := p.verify(c); !errors.Is(err, ErrUnsealed) {
			t.Errorf("entry with %s changed still verifies (err %v)", name, err)
		}
	}
	// A JSON round trip (what etcd stores) keeps the seal valid.
	if err := p.verify(clone(t, base)); err != nil {
		t.Fatalf("round trip: %v", err)
	}
}

// TestSealRefusesSwapForgeryAndOldEntries: an entry moved to another name,
// one sealed under another pod secret, and one written before entries
// were sealed are all refused, with a message that says to republish.
func TestSealRefusesSwapForgeryAndOldEntries(t *testing.T) {
	p := testPool(t, "pod-secret-0123456789abcdef")
	a, b := sample("helloworld"), sample("pyaes")
	b.Published = b.Published.Add(time.Second)
	p.seal(a)
	p.seal(b)
	swapped := clone(t, b)
	swapped.Name = "helloworld" // b's entry under a's key
	err := p.verify(swapped)
	if !errors.Is(err, ErrUnsealed) || !strings.Contains(err.Error(), "republish") || !strings.Contains(err.Error(), `"helloworld"`) {
		t.Fatalf("swapped entry: %v", err)
	}
	other := testPool(t, "another-pods-secret-0123456789")
	forged := sample("helloworld")
	other.seal(forged)
	if err := p.verify(forged); !errors.Is(err, ErrUnsealed) {
		t.Fatalf("entry sealed with another pod secret: %v", err)
	}
	old := sample("helloworld")
	if err := p.verify(old); !errors.Is(err, ErrUnsealed) || !strings.Contains(err.Error(), "no seal") {
		t.Fatalf("unsealed entry: %v", err)
	}
	// reseal never launders a forged entry.
	p.reseal(forged, func(s *control.Snapshot) { s.Segments = nil })
	if err := p.verify(forged); err == nil {
		t.Fatal("rewriting a forged entry sealed it")
	}
	p.reseal(a, func(s *control.Snapshot) { s.Segments = nil })
	if err := p.verify(a); err != nil || a.Segments != nil {
		t.Fatalf("rewriting a sealed entry: %v", err)
	}
	// The key is derived, never the raw secret, and needs 16 bytes.
	if k, _ := CatalogKey([]byte("pod-secret-0123456789abcdef")); bytes.Contains(k, []byte("pod-secret")) || len(k) != 32 {
		t.Fatal("catalog key is not a 32-byte derived key")
	}
	if _, err := CatalogKey([]byte("short")); err == nil {
		t.Fatal("a 5-byte pod secret was accepted")
	}
}

// TestCheckMeta: a metadata object other than the one published is
// refused.
func TestCheckMeta(t *testing.T) {
	blob := bytes.Repeat([]byte{7}, 8192)
	h := header{Meta: &rdma.Object{Len: 8192}, MetaLen: 4096, MetaSHA256: metaDigest(blob)}
	if err := checkMeta("fn", h, blob); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(blob)
	bad[5000] ^= 1
	if err := checkMeta("fn", h, bad); !errors.Is(err, ErrUnsealed) {
		t.Fatalf("changed metadata object: %v", err)
	}
	if err := checkMeta("fn", h, blob[:4096]); err == nil {
		t.Fatal("short metadata object accepted")
	}
	h.MetaSHA256 = ""
	if err := checkMeta("fn", h, blob); !errors.Is(err, ErrUnsealed) {
		t.Fatalf("header without a digest: %v", err)
	}
}

// TestPlacementSeal: a pod's placement verifies only as sealed, for its
// own snapshot, version and pod; any changed extent field, or a placement
// moved to another pod or name, is refused.
func TestPlacementSeal(t *testing.T) {
	p := testPool(t, "pod-secret-0123456789abcdef")
	p.cfg.PodState = nil
	mk := func() *control.Placement {
		pl := &control.Placement{Name: "fn", Pod: "", Published: time.Unix(1700000000, 5),
			Extents: []control.HotExtent{{Descriptor: 3, Gen: 8, Token: 11, Len: 1 << 20}, {Descriptor: 900, Gen: 2, Token: 11, Len: 4096}}}
		p.sealPlacement(pl)
		return pl
	}
	if err := p.verifyPlacement(mk()); err != nil {
		t.Fatal(err)
	}
	for what, change := range map[string]func(*control.Placement){
		"name":      func(pl *control.Placement) { pl.Name = "other" },
		"pod":       func(pl *control.Placement) { pl.Pod = "pod9" },
		"published": func(pl *control.Placement) { pl.Published = pl.Published.Add(time.Nanosecond) },
		"desc":      func(pl *control.Placement) { pl.Extents[1].Descriptor++ },
		"gen":       func(pl *control.Placement) { pl.Extents[0].Gen += 2 },
		"token":     func(pl *control.Placement) { pl.Extents[0].Token-- },
		"len":       func(pl *control.Placement) { pl.Extents[1].Len = 8192 },
		"dropped":   func(pl *control.Placement) { pl.Extents = pl.Extents[:1] },
		"unsealed":  func(pl *control.Placement) { pl.Seal = "" },
	} {
		pl := mk()
		change(pl)
		if err := p.verifyPlacement(pl); !errors.Is(err, ErrUnsealed) {
			t.Errorf("placement with a changed %s verified: %v", what, err)
		}
	}
}
