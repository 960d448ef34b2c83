package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/diskemu"
	"github.com/aquifer-pool/aquifer/guest"
	"golang.org/x/sys/unix"
)

// Storage names: where the disk-based strategies' files live.
const (
	// StorageHost is this machine's own disk: a virtio disk that the outer
	// host caches, read_ahead_kb 8192. Not a device model: reads after
	// dropping the page cache cost little more than page-cache hits.
	StorageHost = "host"
	// StorageNVMe and StorageNetwork are device models (package diskemu)
	// behind FUSE.
	StorageNVMe    = "nvme"
	StorageNetwork = "network"
	// StorageDRAM keeps the files in host DRAM (tmpfs: the page cache is
	// the file), never dropped: what an operator does who spends local
	// memory on snapshots.
	StorageDRAM = "dram"
)

// AllStorages in report order.
var AllStorages = []string{StorageNVMe, StorageNetwork, StorageHost, StorageDRAM}

// DefaultStorages are run unless told otherwise: the modelled local NVMe
// (the primary baseline), this machine's disk as it is, and the files in
// DRAM.
var DefaultStorages = []string{StorageNVMe, StorageHost, StorageDRAM}

// CheckStorages validates a storage list.
func CheckStorages(s []string) error {
	if len(s) == 0 {
		return fmt.Errorf("no storage given (known: %v)", AllStorages)
	}
	for _, x := range s {
		if !slices.Contains(AllStorages, x) {
			return fmt.Errorf("unknown storage %q (known: %v)", x, AllStorages)
		}
	}
	return nil
}

// diskBased reports whether a strategy reads snapshot files from storage.
func diskBased(s string) bool {
	return s == Firecracker || s == FirecrackerUffd || s == REAP || s == FaaSnap
}

// StorageInfo describes one storage of a run.
type StorageInfo struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Model is the device model (nvme, network).
	Model *diskemu.Model `json:"model,omitempty"`
	// ReadAheadKB is the kernel readahead the files are read with.
	ReadAheadKB int `json:"read_ahead_kb,omitempty"`
	// FUSEOverhead is the FUSE round trip measured with the model off and
	// subtracted from every request (4 KiB; plus FUSEOverheadPerKiB).
	FUSEOverhead       time.Duration `json:"fuse_overhead_ns,omitempty"`
	FUSEOverheadPerKiB time.Duration `json:"fuse_overhead_per_kib_ns,omitempty"`
	// Probes are QD1 reads through the model after calibration: what it
	// delivers next to what it claims.
	Probes []diskemu.Probe `json:"probes,omitempty"`
	// Requests the model served during the run.
	Requests *diskemu.Stats `json:"requests,omitempty"`
}

// files are a workload's snapshot files on one storage.
type files struct {
	mem, reapWS, faasnapPlan, loadingSet string
}

func (f files) all() []string {
	var out []string
	for _, p := range []string{f.mem, f.reapWS, f.loadingSet} {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// storages holds the run's DRAM copies and device-model mounts.
type storages struct {
	shm     string
	servers map[string]*modelServer
	stats   map[string]*diskemu.Stats
}

// stopModels ends the model processes, keeping their request counts.
func (s *storages) stopModels() {
	for name, ms := range s.servers {
		if st := ms.stop(); st != nil {
			s.stats[name] = st
		}
	}
}

func (s *storages) close() {
	s.stopModels()
	if s.shm != "" {
		os.RemoveAll(s.shm)
	}
}

// newStorages makes the DRAM directory (always: it is also every
// strategy's verification reference and the models' backing store).
func newStorages() (*storages, error) {
	base := "/dev/shm"
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		base = os.TempDir()
	}
	d, err := os.MkdirTemp(base, "aquifer-bench-")
	if err != nil {
		return nil, err
	}
	return &storages{shm: d, servers: map[string]*modelServer{}, stats: map[string]*diskemu.Stats{}}, nil
}

// copyToDRAM copies a workload's files into the DRAM directory (the memory
// file sparsely: zero pages stay holes, as a snapshot written to tmpfs by a
// careful operator would) and returns their paths there.
func (s *storages) copyToDRAM(name string, host files) (files, error) {
	dir := filepath.Join(s.shm, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return files{}, err
	}
	out := files{mem: filepath.Join(dir, "mem")}
	if err := copySparse(host.mem, out.mem); err != nil {
		return files{}, err
	}
	if host.reapWS != "" {
		out.reapWS = filepath.Join(dir, "reap.ws")
		if err := copySparse(host.reapWS, out.reapWS); err != nil {
			return files{}, err
		}
	}
	if host.loadingSet != "" {
		out.loadingSet = filepath.Join(dir, "loading-set")
		if err := copySparse(host.loadingSet, out.loadingSet); err != nil {
			return files{}, err
		}
		var err error
		if out.faasnapPlan, err = retargetPlan(host.faasnapPlan, out.loadingSet, filepath.Join(dir, "faasnap.json")); err != nil {
			return files{}, err
		}
	}
	return out, nil
}

// retargetPlan writes a copy of a FaaSnap plan whose loading set is ls.
func retargetPlan(plan, ls, out string) (string, error) {
	p, err := guest.ReadFaaSnapPlan(plan)
	if err != nil {
		return "", err
	}
	p.LoadingSet = ls
	b, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	return out, WriteFileAtomic(out, b)
}

// copySparse copies src to dst, leaving all-zero pages as holes.
func copySparse(src, dst string) error { return corpus.CopySparse(dst, src) }

// modelServer is a device model served by its own process (aquifer bench
// storage-model): its threads run at a raised priority, as a device
// answers without waiting for a CPU, while the VMs and the pager keep
// theirs.
type modelServer struct {
	cmd   *exec.Cmd
	out   *bufio.Reader
	ready diskemu.Ready
}

// mount starts the device model name over the DRAM directory and
// calibrates it on probe (a file in the DRAM directory).
func (s *storages) mount(ctx context.Context, bin, name, workDir, probe string) (StorageInfo, error) {
	m := diskemu.Models()[name]
	dir := filepath.Join(workDir, "storage-"+name)
	cmd := exec.CommandContext(ctx, bin, "bench", "storage-model", "--model", name, "--mount", dir, "--backing", s.shm,
		"--probe", probe, "--nice", "-10")
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return StorageInfo{}, err
	}
	if err := cmd.Start(); err != nil {
		return StorageInfo{}, err
	}
	ms := &modelServer{cmd: cmd, out: bufio.NewReader(stdout)}
	s.servers[name] = ms
	type line struct {
		r   diskemu.Ready
		err error
	}
	got := make(chan line, 1)
	go func() {
		var r diskemu.Ready
		b, err := ms.out.ReadBytes('\n')
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		got <- line{r, err}
	}()
	select {
	case l := <-got:
		if l.err != nil {
			return StorageInfo{}, fmt.Errorf("the %s model did not start: %w", name, l.err)
		}
		if l.r.Error != "" {
			return StorageInfo{}, fmt.Errorf("the %s model: %s (use --storage host,dram where FUSE is unavailable)", name, l.r.Error)
		}
		ms.ready = l.r
	case <-time.After(2 * time.Minute):
		return StorageInfo{}, fmt.Errorf("the %s model did not report ready within 2 minutes", name)
	}
	r := ms.ready
	return StorageInfo{Name: name, Model: &m, ReadAheadKB: r.ReadAheadKB, FUSEOverhead: time.Duration(r.FUSEOverhead),
		FUSEOverheadPerKiB: time.Duration(r.FUSEOverheadPerKiB), Probes: r.Probes,
		Kind: fmt.Sprintf("device model (emulated, FUSE, its server at nice -10): %v per request + size at %.1f GB/s, %.0f IOPS, readahead %d KiB",
			m.Latency, m.Bandwidth/1e9, m.IOPS, r.ReadAheadKB)}, nil
}

// stop ends a model's process and returns the requests it served.
func (ms *modelServer) stop() *diskemu.Stats {
	if ms.cmd.Process == nil {
		return nil
	}
	ms.cmd.Process.Signal(os.Interrupt)
	var r diskemu.Ready
	done := make(chan struct{})
	go func() {
		defer close(done)
		if b, err := ms.out.ReadBytes('\n'); err == nil {
			json.Unmarshal(b, &r)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		ms.cmd.Process.Kill()
	}
	ms.cmd.Wait()
	ms.cmd.Process = nil
	return r.Stats
}

// path returns a file of the DRAM directory under the model's mount.
func (ms *modelServer) path(shm, file string) (string, error) {
	rel, err := filepath.Rel(shm, file)
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("%s is not in %s", file, shm)
	}
	return filepath.Join(ms.ready.Mount, rel), nil
}

// on returns a workload's files on the mounted model name.
func (s *storages) on(name string, dram files, planDir string) (files, error) {
	ms := s.servers[name]
	var out files
	var err error
	if out.mem, err = ms.path(s.shm, dram.mem); err != nil {
		return files{}, err
	}
	if dram.reapWS != "" {
		if out.reapWS, err = ms.path(s.shm, dram.reapWS); err != nil {
			return files{}, err
		}
	}
	if dram.loadingSet != "" {
		if out.loadingSet, err = ms.path(s.shm, dram.loadingSet); err != nil {
			return files{}, err
		}
		if out.faasnapPlan, err = retargetPlan(dram.faasnapPlan, out.loadingSet, filepath.Join(planDir, "faasnap-"+name+".json")); err != nil {
			return files{}, err
		}
	}
	return out, nil
}

func hostInfo(path string) StorageInfo {
	info := StorageInfo{Name: StorageHost,
		Kind: "this machine's disk as it is (not a model): a virtio disk cached by the outer host; reads after dropping the page cache cost little more than page-cache hits"}
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil {
		for _, p := range []string{"/sys/dev/block/%d:%d/queue/read_ahead_kb", "/sys/dev/block/%d:%d/../queue/read_ahead_kb"} {
			if b, err := os.ReadFile(fmt.Sprintf(p, unix.Major(st.Dev), unix.Minor(st.Dev))); err == nil {
				fmt.Sscan(strings.TrimSpace(string(b)), &info.ReadAheadKB)
				break
			}
		}
	}
	if info.ReadAheadKB > 0 {
		info.Kind += fmt.Sprintf(", read_ahead_kb %d", info.ReadAheadKB)
	}
	return info
}

// allocated is the DRAM a tmpfs file holds (its allocated blocks).
func allocated(path string) uint64 {
	var st unix.Stat_t
	if path == "" || unix.Stat(path, &st) != nil {
		return 0
	}
	return uint64(st.Blocks) * 512
}

// WriteFileAtomic writes b to path: temp file, fsync, rename, fsync of the
// directory.
func WriteFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
