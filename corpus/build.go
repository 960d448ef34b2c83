package corpus

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"

	"github.com/cavaliergopher/cpio"
)

//go:embed guest/init guest/runner.py guest/functions/*.py plugin/aqtrace.c plugin/qemu_plugin_api.h shim/aqshim.c
var assets embed.FS

// virtioModules are loaded by the initramfs, in this order (dependencies
// first). All are modules in Debian's cloud kernel.
var virtioModules = []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "virtio_balloon"}

// kernelMeta is the Debian metapackage whose dependency names the kernel.
const kernelMeta = "linux-image-cloud-amd64"

// CacheDir returns the cache directory: $AQUIFER_CACHE_DIR, else
// $XDG_CACHE_HOME/aquifer, else ~/.cache/aquifer.
func CacheDir() string {
	if d := os.Getenv("AQUIFER_CACHE_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "aquifer")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "aquifer")
	}
	return filepath.Join(os.TempDir(), "aquifer-cache")
}

// Guest is a built guest: kernel, initramfs and root filesystem image.
type Guest struct {
	// Dir holds everything below.
	Dir string
	// Kernel is the bzImage (vmlinuz) path; KernelVersion its release.
	Kernel, KernelVersion string
	// KernelPackage is the Debian package it came from, with version.
	KernelPackage string
	// Initrd is the newc cpio initramfs.
	Initrd string
	// RootImg is the ext4 image; RootDir the unpacked tree (used for the
	// native calibration in a chroot).
	RootImg, RootDir string
	// Key identifies the inputs (package versions, helper files).
	Key string
	// built is set when this process built the guest (not reused it).
	built bool
}

// Tool checks: what a capture needs on the host.
var requiredTools = []string{"apt-get", "apt-cache", "dpkg", "mkfs.ext4", "gcc", "qemu-system-x86_64", "chroot"}

// CheckHost reports the first missing host requirement, or nil. Tests skip
// with this reason; the CLI prints it.
func CheckHost() error {
	for _, t := range requiredTools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found in PATH (run corpus/ci-deps.sh as root)", t)
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("capture needs root (dpkg -x ownership, chroot calibration)")
	}
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		return errors.New("/dev/shm is not available for guest RAM files")
	}
	return nil
}

func run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// debPkg is one resolved Debian package.
type debPkg struct{ Name, Version, Arch string }

func (p debPkg) file() string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}

// resolve computes the full dependency closure of pkgs as apt would install
// it on an empty system (an empty dpkg status file), without recommends.
func resolve(ctx context.Context, tmp string, pkgs []string) ([]debPkg, error) {
	status := filepath.Join(tmp, "empty-status")
	if err := os.WriteFile(status, nil, 0o644); err != nil {
		return nil, err
	}
	args := append([]string{"-s", "-o", "Dir::State::status=" + status, "-o", "APT::Architecture=amd64",
		"install", "--no-install-recommends"}, pkgs...)
	out, err := run(ctx, tmp, "apt-get", args...)
	if missing := missingPackages(out); len(missing) > 0 {
		for _, m := range missing {
			if m == "python3" || m == kernelMeta || m == "busybox-static" {
				return nil, fmt.Errorf("apt knows no package %s: run `apt-get update` (corpus/ci-deps.sh does)", m)
			}
		}
		return nil, fmt.Errorf("%w: %s (Debian 12 names, as `apt-cache search WORD` or https://packages.debian.org/bookworm list them; no versions)",
			ErrNoPackage, strings.Join(missing, ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("resolving Debian packages (is `apt-get update` done?): %w", err)
	}
	var res []debPkg
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// Inst libc6 (2.36-9+deb12u14 Debian:12.13/stable [amd64])
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "Inst" || !strings.HasPrefix(f[2], "(") {
			continue
		}
		// The architecture is the bracketed word that closes the
		// parenthesised version field: "... [amd64])".
		arch := ""
		line := sc.Text()
		if j := strings.Index(line, "])"); j >= 0 {
			if i := strings.LastIndex(line[:j], "["); i >= 0 {
				arch = line[i+1 : j]
			}
		}
		if arch == "" {
			return nil, fmt.Errorf("cannot parse apt line %q", line)
		}
		res = append(res, debPkg{Name: f[1], Version: strings.TrimPrefix(f[2], "("), Arch: arch})
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("apt resolved no packages for %v; output: %.500s", pkgs, out)
	}
	sort.Slice(res, func(i, j int) bool { return res[i].Name < res[j].Name })
	return res, nil
}

// missingPackages lists the packages apt-get reported it cannot install:
// unknown names, and virtual packages without a candidate.
func missingPackages(out []byte) []string {
	var res []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if p, ok := strings.CutPrefix(l, "E: Unable to locate package "); ok {
			res = append(res, strings.TrimSpace(p))
		} else if p, ok := strings.CutPrefix(l, "E: Package '"); ok {
			if name, rest, ok := strings.Cut(p, "'"); ok && strings.Contains(rest, "has no installation candidate") {
				res = append(res, name+" (a virtual package: name one that provides it)")
			}
		}
	}
	return res
}

// download fetches every missing .deb into dir with apt-get download.
func download(ctx context.Context, dir string, pkgs []debPkg) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var missing []string
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, p.file())); err != nil {
			missing = append(missing, p.Name+"="+p.Version)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	slog.Info("corpus: downloading Debian packages", "count", len(missing), "dir", dir)
	if _, err := run(ctx, dir, "apt-get", append([]string{"download", "-q"}, missing...)...); err != nil {
		return fmt.Errorf("apt-get download: %w", err)
	}
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, p.file())); err != nil {
			return fmt.Errorf("apt-get download did not produce %s", p.file())
		}
	}
	return nil
}

// guestFile is one helper file of a guest: its path below corpus/guest
// ("guest/init", "guest/runner.py", "guest/functions/NAME.py") and content.
// guest/init goes into the initramfs, every other file below /aq.
type guestFile struct {
	path string
	data []byte
}

// guestSpec is what a guest root holds beyond the kernel and busybox: the
// Debian packages (with their dependency closure) and the helper files.
type guestSpec struct {
	packages []string
	files    []guestFile
}

// builtinSpec is the guest of the nine built-in functions: one root with the
// union of their packages and every embedded helper file.
func builtinSpec() (guestSpec, error) {
	s := guestSpec{packages: guestPackages()}
	err := fs.WalkDir(assets, "guest", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := assets.ReadFile(path)
		s.files = append(s.files, guestFile{path, b})
		return err
	})
	return s, err
}

// functionSpec is the guest of a function brought by the operator: its own
// root with python3 and the function's packages, the runner and the
// function's module only.
func functionSpec(f Function) (guestSpec, error) {
	set := map[string]bool{"python3": true}
	for _, p := range f.Packages {
		set[p] = true
	}
	s := guestSpec{}
	for p := range set {
		s.packages = append(s.packages, p)
	}
	sort.Strings(s.packages)
	s.files = append(s.files, guestFile{"guest/functions/" + f.Name + ".py", f.Source})
	for _, p := range []string{"guest/init", "guest/runner.py"} {
		b, err := assets.ReadFile(p)
		if err != nil {
			return s, err
		}
		s.files = append(s.files, guestFile{p, b})
	}
	sort.Slice(s.files, func(i, j int) bool { return s.files[i].path < s.files[j].path })
	return s, nil
}

// guestKey hashes everything that determines a guest build: the package
// versions, the helper files and a build-recipe version, "guest-v2", which
// must be bumped whenever BuildGuest, buildInitrd, fixupRoot or mkfs change
// what they produce (captures made with another key are redone).
func guestKey(kernel debPkg, pkgs []debPkg, files []guestFile) string {
	h := sha256.New()
	fmt.Fprintf(h, "guest-v2\n%s %s\n", kernel.Name, kernel.Version)
	for _, p := range pkgs {
		fmt.Fprintf(h, "%s %s %s\n", p.Name, p.Version, p.Arch)
	}
	for _, f := range files {
		fmt.Fprintf(h, "%s %d\n", f.path, len(f.data))
		h.Write(f.data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// lockCache takes an exclusive lock on the cache directory so that two
// captures never build the same guest or plugin at once.
func lockCache(cache string) (unlock func(), err error) {
	return flockFile(filepath.Join(cache, ".lock"), false)
}

func guestAt(cache, key string) *Guest {
	g := &Guest{Dir: filepath.Join(cache, "guest-"+key), Key: key}
	g.Initrd = filepath.Join(g.Dir, "initrd.cpio")
	g.RootImg = filepath.Join(g.Dir, "rootfs.ext4")
	g.RootDir = filepath.Join(g.Dir, "rootfs")
	return g
}

// OpenGuest returns the guest built in cache with key (a workload's
// Meta.GuestKey): the kernel, initramfs and root filesystem a restore of
// that workload must boot with.
func OpenGuest(cache, key string) (*Guest, error) {
	g := guestAt(cache, key)
	b, err := os.ReadFile(filepath.Join(g.Dir, "complete"))
	if err != nil {
		return nil, fmt.Errorf("guest %s is not built in %s (aquifer corpus capture builds it): %w", key, cache, err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return nil, fmt.Errorf("%s: malformed", filepath.Join(g.Dir, "complete"))
	}
	g.Kernel, g.KernelVersion = f[0], f[1]
	if !filepath.IsAbs(g.Kernel) {
		g.Kernel = filepath.Join(g.Dir, g.Kernel)
	} else if _, err := os.Stat(g.Kernel); err != nil {
		// Recorded by an older build as an absolute path in a cache that
		// has moved since: find it below this guest's directory.
		if _, rel, ok := strings.Cut(g.Kernel, "/"+filepath.Base(g.Dir)+"/"); ok {
			g.Kernel = filepath.Join(g.Dir, rel)
		}
	}
	if len(f) > 2 {
		g.KernelPackage = f[2]
	}
	return g, nil
}

// BuildGuest builds (or reuses from cache) the guest every built-in
// function runs in.
func BuildGuest(ctx context.Context, cache string) (*Guest, error) {
	spec, err := builtinSpec()
	if err != nil {
		return nil, err
	}
	return buildGuest(ctx, cache, spec)
}

// GuestFor builds (or reuses from cache) the guest function f runs in: the
// shared guest of the built-in functions, or for a function brought by the
// operator (LoadFunctionFile) its own, keyed by its packages and source.
func GuestFor(ctx context.Context, cache string, f Function) (*Guest, error) {
	if f.Source == nil {
		return BuildGuest(ctx, cache)
	}
	spec, err := functionSpec(f)
	if err != nil {
		return nil, err
	}
	return buildGuest(ctx, cache, spec)
}

func buildGuest(ctx context.Context, cache string, spec guestSpec) (*Guest, error) {
	unlock, err := lockCache(cache)
	if err != nil {
		return nil, err
	}
	defer unlock()
	tmp, err := os.MkdirTemp(cache, "tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	out, err := run(ctx, tmp, "apt-cache", "depends", kernelMeta)
	if err != nil {
		return nil, fmt.Errorf("finding the cloud kernel (is `apt-get update` done?): %w", err)
	}
	kname := ""
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "Depends: linux-image-") {
			kname = strings.TrimPrefix(l, "Depends: ")
			break
		}
	}
	if kname == "" {
		return nil, fmt.Errorf("%s has no linux-image dependency: %s", kernelMeta, out)
	}
	kres, err := resolve(ctx, tmp, []string{kname, "busybox-static"})
	if err != nil {
		return nil, err
	}
	var kpkg, bbpkg debPkg
	for _, p := range kres {
		switch p.Name {
		case kname:
			kpkg = p
		case "busybox-static":
			bbpkg = p
		}
	}
	if kpkg.Name == "" || bbpkg.Name == "" {
		return nil, fmt.Errorf("could not resolve %s and busybox-static", kname)
	}
	pkgs, err := resolve(ctx, tmp, spec.packages)
	if err != nil {
		return nil, err
	}
	key := guestKey(kpkg, append(pkgs, bbpkg), spec.files)
	if g, err := OpenGuest(cache, key); err == nil {
		g.KernelPackage = kpkg.Name + "=" + kpkg.Version
		slog.Info("corpus: reusing cached guest", "dir", g.Dir)
		return g, nil
	}
	g := guestAt(cache, key)
	g.KernelPackage = kpkg.Name + "=" + kpkg.Version
	g.built = true
	debs := filepath.Join(cache, "debs")
	if err := download(ctx, debs, append([]debPkg{kpkg, bbpkg}, pkgs...)); err != nil {
		return nil, err
	}
	os.RemoveAll(g.Dir)
	if err := os.MkdirAll(g.Dir, 0o755); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok { // no half-built guest is left behind
			os.RemoveAll(g.Dir)
		}
	}()
	start := time.Now()
	// Kernel and busybox.
	kdir := filepath.Join(g.Dir, "kernel")
	for _, p := range []debPkg{kpkg, bbpkg} {
		if _, err := run(ctx, g.Dir, "dpkg", "-x", filepath.Join(debs, p.file()), kdir); err != nil {
			return nil, err
		}
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return nil, fmt.Errorf("expected one vmlinuz in %s, found %v", kernelMeta, vmlinuz)
	}
	g.Kernel = vmlinuz[0]
	g.KernelVersion = strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	if err := buildInitrd(g, kdir); err != nil {
		return nil, err
	}
	// The modules and busybox are in the initramfs now: keep only boot/
	// (vmlinuz), ~95 MB less per guest.
	if ents, err := os.ReadDir(kdir); err == nil {
		for _, e := range ents {
			if e.Name() != "boot" {
				os.RemoveAll(filepath.Join(kdir, e.Name()))
			}
		}
	}
	// Root filesystem: a hard-linked copy of the unpacked packages, cached
	// per package set (guests that differ only in their helper files — the
	// versions of a brought function — share it), plus the helper files.
	base, err := baseRoot(ctx, cache, debs, pkgs)
	if err != nil {
		return nil, err
	}
	if _, err := run(ctx, g.Dir, "cp", "-a", "--link", base, g.RootDir); err != nil {
		// Another file system (a cache dir linked in): copy instead.
		os.RemoveAll(g.RootDir)
		if _, err := run(ctx, g.Dir, "cp", "-a", base, g.RootDir); err != nil {
			return nil, err
		}
	}
	if err := addFiles(g.RootDir, spec.files); err != nil {
		return nil, err
	}
	if err := mkfs(ctx, g.RootDir, g.RootImg); err != nil {
		return nil, err
	}
	// The kernel is recorded relative to the guest's directory, so that a
	// cache moved or copied elsewhere stays usable.
	kernel := g.Kernel
	if rel, err := filepath.Rel(g.Dir, g.Kernel); err == nil && !strings.HasPrefix(rel, "..") {
		kernel = rel
	}
	if err := os.WriteFile(filepath.Join(g.Dir, "complete"), []byte(kernel+" "+g.KernelVersion+" "+g.KernelPackage+"\n"), 0o644); err != nil {
		return nil, err
	}
	ok = true
	slog.Info("corpus: built guest", "dir", g.Dir, "packages", len(pkgs), "kernel", g.KernelVersion, "took", time.Since(start).Round(time.Millisecond))
	return g, nil
}

// buildInitrd writes the newc initramfs: busybox, /init and the modules.
func buildInitrd(g *Guest, kdir string) error {
	mods := map[string]string{}
	err := filepath.WalkDir(filepath.Join(kdir, "lib", "modules"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		for _, m := range virtioModules {
			if name == m+".ko" {
				mods[m] = path
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	type file struct {
		name string
		mode cpio.FileMode
		data []byte
	}
	files := []file{
		{"bin", cpio.TypeDir | 0o755, nil},
		{"dev", cpio.TypeDir | 0o755, nil},
		{"proc", cpio.TypeDir | 0o755, nil},
		{"sys", cpio.TypeDir | 0o755, nil},
		{"newroot", cpio.TypeDir | 0o755, nil},
		{"lib", cpio.TypeDir | 0o755, nil},
		{"lib/modules", cpio.TypeDir | 0o755, nil},
	}
	bb, err := os.ReadFile(filepath.Join(kdir, "bin", "busybox"))
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	files = append(files, file{"bin/busybox", 0o755, bb})
	initScript, err := assets.ReadFile("guest/init")
	if err != nil {
		return err
	}
	files = append(files, file{"init", 0o755, initScript})
	for _, m := range virtioModules {
		p, ok := mods[m]
		if !ok {
			return fmt.Errorf("module %s.ko not found in the kernel package (compressed modules are not supported)", m)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, file{"lib/modules/" + m + ".ko", 0o644, b})
	}
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	for _, f := range files {
		if err := w.WriteHeader(&cpio.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Links: 1}); err != nil {
			return err
		}
		if _, err := w.Write(f.data); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return writeFileAtomic(g.Initrd, buf.Bytes())
}

// baseRoot returns the tree of pkgs unpacked and fixed up (fixupBase),
// cached in CACHE/base-<key>/root, key the package versions. The caller
// holds the cache lock. Guests hard-link it: it must never be written to.
func baseRoot(ctx context.Context, cache, debs string, pkgs []debPkg) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "base-v1\n")
	for _, p := range pkgs {
		fmt.Fprintf(h, "%s %s %s\n", p.Name, p.Version, p.Arch)
	}
	dir := filepath.Join(cache, "base-"+hex.EncodeToString(h.Sum(nil))[:16])
	root := filepath.Join(dir, "root")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return root, nil
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	err := func() error {
		for _, p := range pkgs {
			if _, err := run(ctx, cache, "dpkg", "-x", filepath.Join(debs, p.file()), root); err != nil {
				return err
			}
		}
		if err := fixupBase(ctx, root); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "complete"), []byte(fmt.Sprintf("%d packages\n", len(pkgs))), 0o644)
	}()
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return root, nil
}

// fixupBase does what maintainer scripts would have done: mount points,
// BLAS/LAPACK alternatives, ld.so.cache, bytecode.
func fixupBase(ctx context.Context, root string) error {
	for _, d := range []string{"proc", "sys", "dev", "tmp", "aq/functions", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	// update-alternatives never ran: link libblas.so.3, liblapack.so.3 and
	// libopenblas.so.0 from their provider directories.
	libdir := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
	for _, sub := range []string{"openblas-pthread", "blas", "lapack"} {
		ents, _ := os.ReadDir(filepath.Join(libdir, sub))
		for _, e := range ents {
			n := e.Name()
			if !strings.Contains(n, ".so.") {
				continue
			}
			dst := filepath.Join(libdir, n)
			if _, err := os.Lstat(dst); err == nil {
				continue
			}
			if err := os.Symlink(filepath.Join(sub, n), dst); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	if _, err := os.Stat("/sbin/ldconfig"); err == nil {
		if _, err := run(ctx, root, "/sbin/ldconfig", "-r", root); err != nil {
			return err
		}
	}
	// Byte-compile what py3compile would have compiled at install time.
	if _, err := run(ctx, root, "chroot", root, "/usr/bin/python3", "-m", "compileall", "-q",
		"/usr/lib/python3", "/usr/lib/python3.11"); err != nil {
		slog.Warn("corpus: byte-compiling the guest's Python failed; guests will compile on import", "err", err)
	}
	return nil
}

// addFiles writes the helper files below /aq (guest/init goes to the
// initramfs instead). They are new files: the hard-linked base is not
// written through.
func addFiles(root string, files []guestFile) error {
	for _, f := range files {
		if f.path == "guest/init" {
			continue
		}
		p := filepath.Join(root, "aq", strings.TrimPrefix(f.path, "guest/"))
		os.Remove(p) // never write through a link into the base
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// mkfs makes the ext4 image from root, sized at 1.25x the tree plus slack.
func mkfs(ctx context.Context, root, img string) error {
	var total int64
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, err := d.Info(); err == nil {
			total += (info.Size() + 4095) &^ 4095
		}
		total += 256
		return nil
	})
	if err != nil {
		return err
	}
	sizeMiB := total*5/4>>20 + 64
	tmp := img + ".tmp"
	os.Remove(tmp)
	if _, err := run(ctx, filepath.Dir(img), "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "aqroot", "-d", root, tmp, fmt.Sprintf("%dM", sizeMiB)); err != nil {
		return err
	}
	return os.Rename(tmp, img)
}

// writeFileAtomic writes data atomically and durably (package atomicfile).
func writeFileAtomic(path string, data []byte) error { return atomicfile.WriteFile(path, data, 0o644) }

func writeAtomic(path string, fill func(io.Writer) error) error {
	return atomicfile.Write(path, 0o644, fill)
}
