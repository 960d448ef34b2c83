package snapimage

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestID: an image's ID is the checksum stored in its header, so it names
// exactly the bytes written; another image's differs.
func TestID(t *testing.T) {
	var ids []string
	for si, s := range specs[:2] {
		mem := makeMem(t, s, uint64(si))
		out := filepath.Join(t.TempDir(), "img")
		if _, err := Convert(writeMem(t, mem), out, ConvertOptions{Regions: s.regions, ExtentPages: 16}); err != nil {
			t.Fatal(err)
		}
		im, f, err := Open(out)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		raw, _ := os.ReadFile(out)
		if want := fmt.Sprintf("%016x", binary.LittleEndian.Uint64(raw[checksumAt:])); im.ID() != want {
			t.Fatalf("ID %s, header checksum %s", im.ID(), want)
		}
		ids = append(ids, im.ID())
	}
	if ids[0] == ids[1] {
		t.Fatalf("two images share ID %s", ids[0])
	}
}
