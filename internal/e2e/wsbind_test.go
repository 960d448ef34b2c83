package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/wset"
)

// TestHandleRecordBindsConvert records a VM's working set through `aquifer
// handle --record` and the guest emulator (which verifies every byte), then
// converts it: with its own memory silently, with another snapshot of the
// same size (another function) not at all unless --allow-foreign-ws (issue
// 19, deliverable 4).
func TestHandleRecordBindsConvert(t *testing.T) {
	f := newFixture(t)
	other := filepath.Join(f.dir, "other-mem")
	if _, err := testsnap.Write(other, testsnap.Spec{Size: memSize, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rec := record(t, ctx, f) // aquifer handle --record, the guest emulator as the VM
	fp, err := wset.FingerprintFile(f.mem)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := wset.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	if tr.BindingTo(fp) != wset.Bound {
		t.Fatalf("the recording is %s to %s (%s): %+v", tr.BindingTo(fp), f.mem, fp, tr.Memory)
	}
	fpOther, _ := wset.FingerprintFile(other)

	convert := func(mem string, extra ...string) (string, string, error) {
		cmd := exec.CommandContext(ctx, bin, append([]string{"convert", "--mem", mem, "--ws", rec, "--out", filepath.Join(f.dir, "img")}, extra...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	out, errOut, err := convert(f.mem)
	if err != nil || errOut != "" || !strings.Contains(out, "working set bound") {
		t.Fatalf("own memory: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	_, errOut, err = convert(other)
	if err == nil {
		t.Fatal("convert accepted a recording of another snapshot of the same size")
	}
	for _, want := range []string{fmt.Sprintf("%016x", fp.XXH64), fmt.Sprintf("%016x", fpOther.XXH64), "--allow-foreign-ws"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("refusal does not name %q:\n%s", want, errOut)
		}
	}
	out, errOut, err = convert(other, "--allow-foreign-ws")
	if err != nil || !strings.Contains(errOut, "warning:") || !strings.Contains(out, "working set foreign") {
		t.Fatalf("--allow-foreign-ws: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
}
