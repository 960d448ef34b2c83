package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// TestHandleMalformedHandshake sends each kind of malformed handshake to a
// real `aquifer handle` process: it must exit non-zero with a clear error and
// never panic.
func TestHandleMalformedHandshake(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "mem")
	if err := os.WriteFile(mem, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := uffd.New()
	if err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	defer u.Close()
	u2, err := uffd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer u2.Close()
	one := unix.UnixRights(u.Fd())
	two := unix.UnixRights(u.Fd(), u2.Fd())
	good := func(base, size, off, ps uint64) string {
		b, _ := handshake.Marshal([]handshake.Region{{BaseHostVirtAddr: base, Size: size, Offset: off, PageSize: ps}}, handshake.DialectV1_12)
		return string(b)
	}
	cases := []struct {
		name string
		body string
		oob  []byte
		want string
	}{
		{"bad json", `[{"base_host_virt_addr":4096,,}]`, one, "not valid JSON"},
		{"not an array", `{"regions":1}`, one, "JSON array"},
		{"no fd", good(0x10000, 4096, 0, 4096), nil, "exactly one userfaultfd"},
		{"two fds", good(0x10000, 4096, 0, 4096), two, "one"},
		{"overlap", `[{"base_host_virt_addr":65536,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":69632,"size":4096,"offset":8192,"page_size":4096}]`, one, "overlap"},
		{"unaligned", good(0x10001, 4096, 0, 4096), one, "not aligned"},
		{"beyond file", good(0x10000, 2<<20, 0, 4096), one, "does not fit"},
		{"page size", good(0x10000, 65536, 0, 65536), one, "neither 4096 nor 2097152"},
		{"closed early", `[{"base_host_virt_addr":65536`, one, "mid-message"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sock := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".sock")
			h := exec.CommandContext(ctx, bin, "handle", "--socket", sock, "--mem", mem)
			var out, errb bytes.Buffer
			h.Stdout, h.Stderr = &out, &errb
			if err := h.Start(); err != nil {
				t.Fatal(err)
			}
			waitSocket(t, sock)
			conn, err := handshake.SendRaw(sock, []byte(c.body), c.oob)
			if err != nil {
				t.Fatal(err)
			}
			conn.Close()
			err = h.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("handle exited with %v, want a non-zero exit; stderr: %s", err, errb.String())
			}
			s := errb.String()
			if strings.Contains(s, "panic") || strings.Contains(s, "goroutine ") {
				t.Fatalf("handle panicked: %s", s)
			}
			if !strings.Contains(s, c.want) {
				t.Fatalf("stderr %q does not mention %q", s, c.want)
			}
		})
	}
}
