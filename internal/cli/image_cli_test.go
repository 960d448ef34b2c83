package cli

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/aquifer-pool/aquifer/wset"
)

// runCLI runs the aquifer command tree with args and returns stdout.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	resetFlags(root())
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetArgs(args)
	defer rootCmd.SetArgs(nil)
	defer rootCmd.SetOut(nil)
	err := root().Execute()
	return out.String(), err
}

// resetFlags puts every flag of the tree back to its default, so one
// test's flags do not leak into the next command line.
func resetFlags(c *cobra.Command) {
	reset := func(f *pflag.Flag) {
		if f.Changed {
			if sv, ok := f.Value.(pflag.SliceValue); ok {
				var def []string
				if d := strings.Trim(f.DefValue, "[]"); d != "" {
					def = strings.Split(d, ",")
				}
				sv.Replace(def)
			} else {
				f.Value.Set(f.DefValue)
			}
			f.Changed = false
		}
	}
	c.PersistentFlags().VisitAll(reset)
	c.Flags().VisitAll(reset)
	for _, s := range c.Commands() {
		resetFlags(s)
	}
}

// TestImageCommands drives inspect, ws merge/show, convert and verify
// end to end on a memory file with known content: 64 pages of which pages
// 0-9, 20-39 and 50-63 are zero (44 zero pages, runs of 10, 20, 14),
// pages 10-14 are one content, 15-19 unique, 40-49 unique.
func TestImageCommands(t *testing.T) {
	dir := t.TempDir()
	const ps = 4096
	mem := make([]byte, 64*ps)
	rng := rand.New(rand.NewPCG(1, 1))
	same := make([]byte, ps)
	for i := range same {
		same[i] = byte(rng.Uint32()) | 1
	}
	for p := 10; p < 15; p++ {
		copy(mem[p*ps:], same)
	}
	for _, p := range []int{15, 16, 17, 18, 19, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49} {
		for i := 0; i < ps; i++ {
			mem[p*ps+i] = byte(rng.Uint32())
		}
		mem[p*ps] = 0xff
	}
	memPath := filepath.Join(dir, "mem")
	if err := os.WriteFile(memPath, mem, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "inspect", "--json", memPath)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	want := map[string]float64{"pages": 64, "page_size": 4096, "zero_pages": 44, "nonzero_pages": 20,
		"distinct_nonzero_pages": 16, "duplicate_pages": 4}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("inspect %s = %v, want %v", k, got[k], v)
		}
	}
	runs := got["zero_runs"].(map[string]any)
	if runs["count"] != 3.0 || runs["longest"] != 20.0 {
		t.Errorf("zero_runs %v", runs)
	}
	if _, ok := got["hot_pages"]; ok {
		t.Error("hot_pages without a trace")
	}

	// Two recordings that each miss pages the other touches.
	a := &wset.Trace{PageSize: ps, MemSize: uint64(len(mem)), Source: "a", Accesses: []wset.Access{
		{Page: 40, T: 0, Kind: wset.Read}, {Page: 0, T: 1, Kind: wset.Write}, {Page: 41, T: 2, Kind: wset.Exec}, {Page: 10, T: 3, Kind: wset.Read}}}
	b := &wset.Trace{PageSize: ps, MemSize: uint64(len(mem)), Source: "b", Accesses: []wset.Access{
		{Page: 42, T: 0, Kind: wset.Read}, {Page: 41, T: 1, Kind: wset.Write}, {Page: 1, T: 5 * time.Microsecond, Kind: wset.Read}}}
	pa, pb, pm := filepath.Join(dir, "a.ws"), filepath.Join(dir, "b.ws"), filepath.Join(dir, "m.ws")
	if err := wset.WriteFile(pa, a); err != nil {
		t.Fatal(err)
	}
	if err := wset.WriteFile(pb, b); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "ws", "merge", pa, pb, "-o", pm); err != nil {
		t.Fatal(err)
	}
	m, err := wset.ReadFile(pm)
	if err != nil {
		t.Fatal(err)
	}
	var order []uint64
	for _, x := range m.Accesses {
		order = append(order, x.Page)
	}
	if got, want := order, []uint64{40, 42, 0, 41, 10, 1}; !equalU64(got, want) {
		t.Fatalf("merged order %v, want %v", got, want)
	}
	out, err = runCLI(t, "ws", "show", "--json", "--limit", "-1", pm)
	if err != nil || !strings.Contains(out, `"distinct_pages": 6`) {
		t.Fatalf("ws show: %v %s", err, out)
	}

	out, err = runCLI(t, "inspect", "--json", "--trace", pm, memPath)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	json.Unmarshal([]byte(out), &got)
	if got["hot_pages"] != 4.0 || got["touched_zero_pages"] != 2.0 || got["touched_pages"] != 6.0 {
		t.Fatalf("inspect with trace: %s", out)
	}

	img := filepath.Join(dir, "img")
	out, err = runCLI(t, "convert", "--mem", memPath, "--ws", pm, "--out", img, "--hot-budget", "3", "--json")
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	json.Unmarshal([]byte(out), &got)
	if got["hot_pages"] != 3.0 || got["cold_pages"] != 17.0 || got["zero_pages"] != 44.0 || got["over_budget_pages"] != 1.0 {
		t.Fatalf("convert: %s", out)
	}
	out, err = runCLI(t, "verify", img, "--mem", memPath)
	if err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("verify: %v %s", err, out)
	}
	// A flipped byte in the cold segment fails verify with exit code 2.
	raw, _ := os.ReadFile(img)
	raw[len(raw)-1] ^= 1
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, raw, 0o644)
	_, err = runCLI(t, "verify", bad, "--mem", memPath)
	var ee *exitError
	if err == nil || !strings.Contains(err.Error(), "cold segment page") || !asExit(err, &ee) || ee.code != 2 {
		t.Fatalf("verify of corrupt image: %v", err)
	}

	regs, err := parseRegions("0:0xC0000000, 0x100000000:1GiB")
	if err != nil || len(regs) != 2 || regs[0].Size != 0xC0000000 || regs[1].GuestAddr != 1<<32 || regs[1].Size != 1<<30 {
		t.Fatalf("parseRegions: %+v %v", regs, err)
	}
	for _, s := range []string{"", "0", "0:0", "x:1", "0:y"} {
		if _, err := parseRegions(s); err == nil {
			t.Errorf("parseRegions(%q) accepted", s)
		}
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func asExit(err error, ee **exitError) bool {
	e, ok := err.(*exitError)
	*ee = e
	return ok
}
