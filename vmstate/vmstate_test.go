package vmstate

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/vmmproc"
)

type owned struct {
	Record
	Snapshot string `json:"snapshot"`
}

func TestRecordRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vm1.vm")
	r, err := NewRecord()
	if err != nil {
		t.Fatal(err)
	}
	v := &owned{Record: r, Snapshot: "fn"}
	if err := Save(p, v); err != nil {
		t.Fatal(err)
	}
	var w owned
	if err := Load(p, &w); err != nil || w.Phase != PhaseWaiting || w.Snapshot != "fn" || w.BootID == "" {
		t.Fatalf("waiting record: %+v %v", w, err)
	}
	regions := []handshake.Region{{BaseHostVirtAddr: 1 << 30, Size: 8 << 20, Offset: 0, PageSize: 4096},
		{BaseHostVirtAddr: 4 << 30, Size: 4 << 20, Offset: 8 << 20, PageSize: 4096}}
	v.Serve(vmmproc.Identity{PID: 42, StartTime: 7, BootID: r.BootID}, vmmproc.FileID{Dev: 1, Ino: 99}, handshake.DialectV1_12, regions)
	if err := Save(p, v); err != nil {
		t.Fatal(err)
	}
	w = owned{}
	if err := Load(p, &w); err != nil {
		t.Fatal(err)
	}
	if w.Phase != PhaseServing || w.VMM.PID != 42 || w.UFFD.Ino != 99 || w.Dialect != "1.12" {
		t.Fatalf("serving record: %+v", w)
	}
	got := w.HandshakeRegions()
	if len(got) != 2 || got[1] != regions[1] {
		t.Fatalf("regions %+v", got)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
}

func TestRecordRefused(t *testing.T) {
	for name, js := range map[string]string{
		"not json":       `{`,
		"format":         `{"format":2,"phase":"waiting"}`,
		"phase":          `{"format":1,"phase":"exploded"}`,
		"no vmm":         `{"format":1,"phase":"serving","uffd":{"ino":3},"dialect":"1.12","regions":[{"base_host_virt_addr":4096,"size":4096,"page_size":4096}]}`,
		"no uffd":        `{"format":1,"phase":"serving","vmm":{"pid":3},"dialect":"1.12","regions":[{"base_host_virt_addr":4096,"size":4096,"page_size":4096}]}`,
		"bad dialect":    `{"format":1,"phase":"serving","vmm":{"pid":3},"uffd":{"ino":3},"dialect":"zz","regions":[{"base_host_virt_addr":4096,"size":4096,"page_size":4096}]}`,
		"no regions":     `{"format":1,"phase":"serving","vmm":{"pid":3},"uffd":{"ino":3},"dialect":"1.12"}`,
		"overlap":        `{"format":1,"phase":"serving","vmm":{"pid":3},"uffd":{"ino":3},"dialect":"1.12","regions":[{"base_host_virt_addr":4096,"size":8192,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":8192,"page_size":4096}]}`,
		"bad page size":  `{"format":1,"phase":"serving","vmm":{"pid":3},"uffd":{"ino":3},"dialect":"1.12","regions":[{"base_host_virt_addr":4096,"size":4096,"page_size":12}]}`,
		"unaligned base": `{"format":1,"phase":"serving","vmm":{"pid":3},"uffd":{"ino":3},"dialect":"1.12","regions":[{"base_host_virt_addr":4097,"size":4096,"page_size":4096}]}`,
	} {
		var o owned
		if err := Decode([]byte(js), &o); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestRemoveLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vm1.removes")
	if got, err := ReadRemoves(p); err != nil || len(got) != 0 {
		t.Fatalf("missing log: %v %v", got, err)
	}
	l, err := OpenRemoveLog(p)
	if err != nil {
		t.Fatal(err)
	}
	l.Append(4096, 8192)
	l.Append(1<<30, 1<<30+1<<21)
	// A second writer (a successor during a handoff) appends to the same log.
	l2, err := OpenRemoveLog(p)
	if err != nil {
		t.Fatal(err)
	}
	l2.Append(1<<31, 1<<31+4096)
	l2.Close()
	l.Close()
	got, err := ReadRemoves(p)
	if err != nil || len(got) != 3 || got[0] != [2]uint64{4096, 8192} || got[2] != [2]uint64{1 << 31, 1<<31 + 4096} {
		t.Fatalf("log %v %v", got, err)
	}
	// A torn last record is ignored; an inverted range is corruption.
	b, _ := os.ReadFile(p)
	if got, err := DecodeRemoves(append(b, 1, 2, 3)); err != nil || len(got) != 3 {
		t.Fatalf("torn: %v %v", got, err)
	}
	bad := make([]byte, 16)
	bad[0] = 9
	if _, err := DecodeRemoves(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("inverted range: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"format":1,"phase":"waiting","boot_id":"x"}`))
	f.Add([]byte(`{"format":1,"phase":"serving","vmm":{"pid":3,"start_time":9,"boot_id":"b"},"uffd":{"dev":1,"ino":3},"dialect":"1.12","regions":[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var o owned
		if err := Decode(b, &o); err == nil && o.Phase == PhaseServing {
			if len(o.HandshakeRegions()) == 0 || o.VMM == nil || o.UFFD == nil {
				t.Fatalf("accepted an incomplete serving record: %s", b)
			}
		}
	})
}

func FuzzDecodeRemoves(f *testing.F) {
	f.Add(make([]byte, 32))
	f.Add([]byte{0, 16, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeRemoves(b)
		for _, r := range got {
			if r[1] <= r[0] {
				t.Fatalf("returned range %v", r)
			}
		}
		_ = err
	})
}
