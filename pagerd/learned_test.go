package pagerd

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/aquifer-pool/aquifer/pager"
)

// TestLearnedKept: a history saved in the state directory reads back for
// the same image only; a missing file is an empty history, a corrupt or
// foreign one is refused (the daemon then warns and learns again).
func TestLearnedKept(t *testing.T) {
	dir := t.TempDir()
	d := &Daemon{cfg: Config{StateDir: dir}, log: slog.New(slog.DiscardHandler)}
	h := pager.NewHistory(16)
	h.Learn([]uint64{7, 3, 9})
	d.saveHistory("00aa", h)
	got, err := readLearned(d.learnedPath("00aa"), "00aa")
	if err != nil || !slices.Equal(got, []uint64{7, 3, 9}) {
		t.Fatalf("read back %v, %v; want [7 3 9]", got, err)
	}
	if fi, err := os.Stat(d.learnedPath("00aa")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("history file: %v %v", fi, err)
	}
	if got, err := readLearned(d.learnedPath("00bb"), "00bb"); err != nil || got != nil {
		t.Fatalf("no file: %v, %v; want an empty history", got, err)
	}
	if _, err := readLearned(d.learnedPath("00aa"), "00cc"); err == nil {
		t.Fatal("another image's history accepted")
	}
	bad := filepath.Join(dir, learnedDir, "00dd")
	os.WriteFile(bad, []byte(`{"image":"00dd","pages":[1,`), 0o600)
	if _, err := readLearned(bad, "00dd"); err == nil {
		t.Fatal("a truncated history accepted")
	}
	// The directory holds no VM record: the records scan ignores it.
	if ids, err := d.records(); err != nil || len(ids) != 0 {
		t.Fatalf("records %v %v", ids, err)
	}
}

func FuzzParseLearned(f *testing.F) {
	for _, s := range []string{`{"image":"ab","pages":[1,2,3]}`, `{"image":"ab","pages":[]}`, `{"image":"ab"}`,
		`{"image":"cd","pages":[1]}`, `{"image":"ab","pages":[-1]}`, `[]`, ``, `{"image":"ab","pages":[18446744073709551615]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pages, err := parseLearned(b, "ab")
		if err != nil && pages != nil {
			t.Fatalf("error %v with pages %v", err, pages)
		}
	})
}
