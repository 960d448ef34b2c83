package embed

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/shm"
	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"github.com/aquifer-pool/aquifer/memnode"
)

// SecretFileName is the pod secret's name inside the data directory.
const SecretFileName = "pod.secret"

// InitResult says what Init made.
type InitResult struct {
	Dir           string
	SecretFile    string
	SecretCreated bool // false: an existing secret was kept
	CXLPath       string
	Geometry      pod.Geometry
}

// Init prepares a pod's persistent state on this host, what `aquifer pool
// init` does: the data directory (0700), the pod secret (0600, kept if it
// exists) and the formatted emulated CXL region. An existing region is
// refused unless force, which recreates it empty: every hot placement in
// an existing catalog then fails its generation check and restores fall
// back to the RDMA copies, so nothing wrong is ever served.
func Init(c PodConfig, force bool) (*InitResult, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	b, _ := parseCXL(c.CXL, c.Name)
	if b.kind != "shm" {
		return nil, fieldErr("cxl", "pool init formats an emulated region (shm:PATH); format a device with `aquifer cxl format --cxl devdax:DEV`")
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return nil, fieldErr("data-dir", "%w", err)
	}
	res := &InitResult{Dir: c.DataDir, SecretFile: c.SecretFile, CXLPath: b.arg}
	created, err := writeSecret(c.SecretFile)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	res.SecretCreated = created
	if !created {
		if s, err := memnode.ParseSecret(c.SecretFile); err != nil || len(s) < 16 {
			return nil, fieldErr("secret-file", "existing pod secret %s is unreadable or shorter than 16 bytes (%w): remove it to make a new one", c.SecretFile, err)
		}
	}
	if _, err := os.Stat(b.arg); err == nil {
		if !force {
			return nil, fieldErr("cxl", "region %s already exists; pass --force to format it again (its hot segments are lost; snapshots fall back to their RDMA copies)", b.arg)
		}
		if err := os.Remove(b.arg); err != nil {
			return nil, err
		}
	}
	if _, err := pod.Plan(c.CXLSize, pod.PageSize, pod.FormatOptions{ChunkSize: c.CXLChunk}); err != nil {
		return nil, fieldErr("cxl-chunk", "a region of %d bytes with %d-byte chunks: %w", c.CXLSize, c.CXLChunk, err)
	}
	if err := shm.Create(b.arg, c.CXLSize); err != nil {
		return nil, err
	}
	r, err := shm.Open(b.arg, shm.All(c.CXLSize), nil)
	if err != nil {
		os.Remove(b.arg)
		return nil, err
	}
	defer r.Close()
	if res.Geometry, err = pod.Format(r, pod.FormatOptions{ChunkSize: c.CXLChunk}); err != nil {
		os.Remove(b.arg)
		return nil, err
	}
	return res, nil
}

// podSecret reads the pod secret at path, creating it if it is missing.
// It is written as base64 text so that memnode.ParseSecret (which trims
// trailing whitespace) reads the same bytes as this process does.
func podSecret(path string) ([]byte, error) {
	if b, err := memnode.ParseSecret(path); err == nil && len(b) >= 16 {
		return b, nil
	}
	if _, err := writeSecret(path); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	return memnode.ParseSecret(path)
}

// writeSecret creates a fresh 256-bit secret at path (mode 0600), written
// durably. An existing file is kept and os.ErrExist returned.
func writeSecret(path string) (bool, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return false, err
	}
	txt := []byte(base64.StdEncoding.EncodeToString(raw) + "\n")
	if _, err := os.Stat(path); err == nil {
		return false, fmt.Errorf("pod secret %s: %w", path, os.ErrExist)
	}
	// Write it under a temporary name, then link it into place: the link
	// fails if someone created the file meanwhile.
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d", filepath.Base(path), os.Getpid()))
	if err := atomicfile.WriteFile(tmp, txt, 0o600); err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return false, err
	}
	return true, atomicfile.SyncDir(filepath.Dir(path))
}

// listenMemNode listens for in-process memory node dir. Published
// segments name their memory nodes by address, so a node keeps the address
// it was first given (recorded in dir/listen.addr) across restarts:
// otherwise a restarted pod could not find any snapshot published before.
func listenMemNode(dir string) (net.Listener, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "listen.addr")
	if b, err := os.ReadFile(file); err == nil {
		addr := strings.TrimSpace(string(b))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("in-process memory node %s must listen on %s again (its published segments are recorded there): %w", dir, addr, err)
		}
		return l, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(file, []byte(l.Addr().String()+"\n"), 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
