package hugetlb

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakePool points the package at a fake sysfs directory.
func fakePool(t *testing.T, total, free, resv int) string {
	t.Helper()
	d := t.TempDir()
	for name, v := range map[string]int{"nr_hugepages": total, "free_hugepages": free, "resv_hugepages": resv, "surplus_hugepages": 0} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(strconv.Itoa(v)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := dir
	dir = d
	t.Cleanup(func() { dir = old })
	return d
}

// A short pool is reported with the sysctl and the value that fixes it.
func TestCheckNamesTheSysctl(t *testing.T) {
	fakePool(t, 10, 6, 2)
	p, err := Status()
	if err != nil || p.Available() != 4 {
		t.Fatalf("status %+v %v", p, err)
	}
	if err := Check(4); err != nil {
		t.Fatal(err)
	}
	err = Check(9)
	var se *ShortError
	if !errors.As(err, &se) || !errors.Is(err, ErrShort) {
		t.Fatalf("Check(9): %v", err)
	}
	for _, want := range []string{"9 needed", "4 available", "sysctl -w vm.nr_hugepages=15", "/proc/sys/vm/nr_hugepages"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("%q does not say %q", err, want)
		}
	}
}

// A pool that cannot be raised (here a read-only fake) is a ShortError
// that says the raise failed; Grow never writes a smaller value.
func TestGrowNeverShrinks(t *testing.T) {
	d := fakePool(t, 10, 8, 0)
	if _, err := Grow(5); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(d, "nr_hugepages")); strings.TrimSpace(string(b)) != "10" {
		t.Fatalf("Grow(5) with 8 free rewrote nr_hugepages to %s", b)
	}
	// The fake's free count does not follow the write: the kernel
	// "allocated" nothing.
	_, err := Grow(12)
	if !errors.Is(err, ErrShort) || !strings.Contains(err.Error(), "allocated") {
		t.Fatalf("Grow(12): %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(d, "nr_hugepages")); strings.TrimSpace(string(b)) != "14" {
		t.Fatalf("Grow(12) with 8 free of 10 wrote %s, want 14", b)
	}
}

// On the real pool: growing by a few pages and warming them works (skipped
// only where the kernel has no hugetlb pool or this is not root).
func TestGrowAndWarm(t *testing.T) {
	if _, err := Status(); err != nil {
		t.Skip(err)
	}
	p, err := Grow(4)
	if err != nil {
		t.Skipf("cannot reserve 4 huge pages: %v", err)
	}
	if p.Available() < 4 {
		t.Fatalf("Grow(4) left %+v", p)
	}
	d, err := Warm(4)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := Status()
	if q.Total < p.Total {
		t.Fatalf("the pool shrank from %d to %d", p.Total, q.Total)
	}
	t.Logf("warmed 4 huge pages in %v (%v)", d, q)
}
