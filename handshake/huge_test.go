package handshake

import (
	"strings"
	"testing"
)

// A 2 MiB (hugetlbfs) guest in every dialect that carries a page size:
// 1.7-1.11 put 2097152 in page_size_kib (bytes, despite the name), 1.12+
// in page_size and page_size_kib alike; both parse to 2 MiB regions.
func TestHugePageSizeDialects(t *testing.T) {
	regions := []Region{{0x7f0000000000, 3 << 30, 0, PageSize2M}, {0x7f1000000000, 1 << 30, 3 << 30, PageSize2M}}
	for _, d := range []Dialect{DialectV1_7, DialectV1_12} {
		b, err := Marshal(regions, d)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if !strings.Contains(s, `"page_size_kib":2097152`) || strings.Contains(s, `"page_size":2097152`) != (d == DialectV1_12) {
			t.Fatalf("%v: %s", d, s)
		}
		got, err := Parse(b, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if err := Validate(got, 4<<30); err != nil {
			t.Fatalf("%v: %v", d, err)
		}
		for i := range regions {
			if got[i] != regions[i] {
				t.Fatalf("%v region %d: got %+v want %+v", d, i, got[i], regions[i])
			}
		}
		if dialectOf(b) != d {
			t.Fatalf("dialect of %s: %v", s, dialectOf(b))
		}
	}
}

// Regions of a 2 MiB guest are validated against 2 MiB alignment, and all
// regions must share the page size.
func TestHugeValidate(t *testing.T) {
	const h = PageSize2M
	if err := Validate([]Region{{8 * h, 4 * h, 0, h}, {64 * h, 2 * h, 4 * h, h}}, 6*h); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		regions []Region
		want    string
	}{
		{"base 4 KiB aligned only", []Region{{8*h + 4096, 4 * h, 0, h}}, "not aligned to page size 2097152"},
		{"size 4 KiB multiple only", []Region{{8 * h, 4*h + 4096, 0, h}}, "not aligned"},
		{"offset 4 KiB aligned only", []Region{{8 * h, 4 * h, 4096, h}}, "not aligned"},
		{"mixed page sizes", []Region{{8 * h, 4 * h, 0, h}, {64 * h, 2 * h, 4 * h, PageSize4K}}, "one page size"},
		{"page_size_kib in KiB", []Region{{8 * h, 4 * h, 0, 2048}}, "neither 4096 nor 2097152"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := Validate(c.regions, -1); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
	// page_size and page_size_kib must agree (1.12+ sends both).
	if _, err := Parse([]byte(`[{"base_host_virt_addr":4194304,"size":4194304,"offset":0,"page_size_kib":4096,"page_size":2097152}]`), 4096); err == nil || !strings.Contains(err.Error(), "disagrees") {
		t.Fatalf("disagreeing page sizes: %v", err)
	}
}
