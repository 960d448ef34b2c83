package handshake

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDialects(t *testing.T) {
	cases := []struct {
		name, body string
		want       []Region
	}{
		{"1.1-1.6", `[{"base_host_virt_addr":140737488355328,"size":8192,"offset":0},{"base_host_virt_addr":140737488367616,"size":4096,"offset":8192}]`,
			[]Region{{0x800000000000, 8192, 0, 4096}, {0x800000003000, 4096, 8192, 4096}}},
		{"1.7-1.11 page_size_kib in bytes", `[{"base_host_virt_addr":4194304,"size":4194304,"offset":0,"page_size_kib":2097152}]`,
			[]Region{{4194304, 4194304, 0, 2097152}}},
		{"1.12+", ` [{"base_host_virt_addr":4096,"size":4096,"offset":4096,"page_size_kib":4096,"page_size":4096}] `,
			[]Region{{4096, 4096, 4096, 4096}}},
		{"unknown fields ignored", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"future":true}]`,
			[]Region{{4096, 4096, 0, 4096}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse([]byte(c.body), 4096)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %+v want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("region %d: got %+v want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	regions := []Region{{0x7f0000000000, 3 << 30, 0, 4096}, {0x7f1000000000, 1 << 30, 3 << 30, 4096}}
	for _, d := range Dialects {
		b, err := Marshal(regions, d)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if has := strings.Contains(s, `"page_size"`); has != (d == DialectV1_12) {
			t.Fatalf("%v: page_size present=%v: %s", d, has, s)
		}
		if has := strings.Contains(s, `"page_size_kib":4096`); has != (d >= DialectV1_7) {
			t.Fatalf("%v: page_size_kib (in bytes) present=%v: %s", d, has, s)
		}
		got, err := Parse(b, 4096)
		if err != nil {
			t.Fatal(err)
		}
		for i := range regions {
			if got[i] != regions[i] {
				t.Fatalf("%v: got %+v want %+v", d, got[i], regions[i])
			}
		}
		if dialectOf(b) != d {
			t.Fatalf("dialectOf(%s) = %v, want %v", b, dialectOf(b), d)
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"not json", `hello`, "not valid JSON"},
		{"object not array", `{"base_host_virt_addr":0}`, "JSON array"},
		{"empty array", `[]`, "empty"},
		{"missing size", `[{"base_host_virt_addr":4096,"offset":0}]`, "missing"},
		{"negative", `[{"base_host_virt_addr":-1,"size":4096,"offset":0}]`, "region 0"},
		{"string field", `[{"base_host_virt_addr":"x","size":4096,"offset":0}]`, "region 0"},
		{"trailing", `[{"base_host_virt_addr":4096,"size":4096,"offset":0}] []`, "trailing"},
		{"disagreeing sizes", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4}]`, "disagrees"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.body), 4096)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want it to mention %q", err, c.want)
			}
		})
	}
	for _, prefix := range []string{"", "  ", `[`, `[{"base_host_virt_addr":4096`, `[{"base_host_virt_addr":4096,"size":4096,"offset":0}`} {
		if _, err := Parse([]byte(prefix), 4096); !errors.Is(err, ErrIncomplete) {
			t.Fatalf("Parse(%q) = %v, want ErrIncomplete", prefix, err)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := []Region{{0x10000, 0x4000, 0, 4096}, {0x40000, 0x2000, 0x4000, 4096}}
	if err := Validate(ok, 0x6000); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		regions []Region
		mem     int64
		want    string
	}{
		{"page size", []Region{{0x10000, 0x4000, 0, 8192}}, -1, "neither 4096 nor 2097152"},
		{"unaligned base", []Region{{0x10001, 0x4000, 0, 4096}}, -1, "not aligned"},
		{"unaligned size", []Region{{0x10000, 0x4001, 0, 4096}}, -1, "not aligned"},
		{"unaligned offset", []Region{{0x10000, 0x4000, 1, 4096}}, -1, "not aligned"},
		{"huge unaligned", []Region{{1 << 21, 4096, 0, 2 << 20}}, -1, "not aligned"},
		{"zero size", []Region{{0x10000, 0, 0, 4096}}, -1, "zero"},
		{"host overlap", []Region{{0x10000, 0x4000, 0, 4096}, {0x12000, 0x2000, 0x4000, 4096}}, -1, "overlap in host"},
		{"file overlap", []Region{{0x10000, 0x4000, 0, 4096}, {0x40000, 0x2000, 0x3000, 4096}}, -1, "overlap in the memory file"},
		{"beyond file", ok, 0x5000, "does not fit"},
		{"overflow", []Region{{^uint64(0) &^ 4095, 8192, 0, 4096}}, -1, "overflows"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Validate(c.regions, c.mem)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestParseDialect(t *testing.T) {
	for v, want := range map[string]Dialect{"1.1": DialectV1_1, "v1.6.0": DialectV1_1, "1.7": DialectV1_7,
		"1.11": DialectV1_7, "1.12": DialectV1_12, "v1.16.1": DialectV1_12} {
		got, err := ParseDialect(v)
		if err != nil || got != want {
			t.Fatalf("ParseDialect(%q) = %v, %v; want %v", v, got, err, want)
		}
	}
	for _, bad := range []string{"", "2.0", "1.0", "x"} {
		if _, err := ParseDialect(bad); err == nil {
			t.Fatalf("ParseDialect(%q) accepted", bad)
		}
	}
}

// FuzzParse checks that no input makes the parser or validator panic, and
// that whatever parses also round-trips through Marshal.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`[{"base_host_virt_addr":140737488355328,"size":8192,"offset":0}]`,
		`[{"base_host_virt_addr":4194304,"size":4194304,"offset":0,"page_size_kib":2097152}]`,
		`[{"base_host_virt_addr":4096,"size":4096,"offset":4096,"page_size_kib":4096,"page_size":4096}]`,
		`[{"base_host_virt_addr":4096,"size":4096,"offset":0},{"base_host_virt_addr":4096,"size":4096,"offset":0}]`,
		`[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0}]`,
		`[`, `{}`, `[]`, `null`, `[null]`, `[1]`, `"x"`,
	} {
		f.Add([]byte(s), int64(1<<30))
	}
	f.Fuzz(func(t *testing.T, data []byte, mem int64) {
		regions, err := Parse(data, 4096)
		if err != nil {
			return
		}
		verr := Validate(regions, mem)
		for _, d := range Dialects {
			b, err := Marshal(regions, d)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Parse(b, 4096)
			if err != nil {
				t.Fatalf("re-parse of %s: %v", b, err)
			}
			if d != DialectV1_1 {
				for i := range regions {
					if again[i] != regions[i] {
						t.Fatalf("round trip %v: %+v != %+v", d, again[i], regions[i])
					}
				}
			}
		}
		if verr == nil {
			for _, r := range regions {
				if r.Size == 0 || r.PageSize == 0 || r.BaseHostVirtAddr%r.PageSize != 0 {
					t.Fatalf("Validate accepted %+v", r)
				}
			}
		}
	})
}
