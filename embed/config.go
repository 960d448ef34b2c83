package embed

import (
	"errors"
	"fmt"
	"github.com/aquifer-pool/aquifer/internal/prio"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/cxl/devdax"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultLearnedCold is the cold bytes a daemon learns per snapshot
// unless Config.LearnedCold says otherwise.
const DefaultLearnedCold = 8 << 20

// Config describes one host's pager daemon and, in pod mode, the pod
// pieces it runs or joins. Exactly one of Images and Pod is set.
type Config struct {
	// API is the control API socket (required).
	API string
	// SocketDir holds the per-VM UFFD sockets (default: vms/ beside API).
	SocketDir string
	// StateDir holds the durable record of every VM served (default:
	// SocketDir with ".state" appended, beside it). A daemon started on it
	// takes back every VM whose VMM still runs.
	StateDir string
	// HandoffSocket is where the daemon waits for a successor to take its
	// VMs over without a stall (default: API with ".handoff" appended;
	// "none": no handoffs).
	HandoffSocket string
	// HandoffFrom, if set, takes over the running daemon waiting at this
	// handoff socket (a planned upgrade): its VMs, its directories' locks
	// and its API socket. Its directories and API must be these.
	HandoffFrom string
	// VMMUID is the uid Firecracker runs as (under the jailer); -1 means
	// this process's own uid.
	VMMUID int
	// Workers serve demand faults per VM (default 2).
	Workers int
	// EarlyResume makes every VM ready once zero runs are set up (the hot
	// set then streams in while it runs).
	EarlyResume bool
	// LearnedCold is how many bytes of cold pages the daemon learns per
	// snapshot from its restores' cold faults and reads ahead of later
	// restores (pager.History): 0 means the default, 8 MiB; negative
	// turns learning off.
	LearnedCold int64
	// AcceptTimeout bounds the wait for a VM's Firecracker (default 60s).
	AcceptTimeout time.Duration
	// HugePages is the number of 2 MiB huge pages this host's 2 MiB
	// (hugetlbfs) guests hold at once: Start checks that the hugetlb pool
	// has them available, refusing to start otherwise with the sysctl to
	// run, and warms them (huge.go). 0: no check (2 MiB restores are still
	// checked one by one when prepared).
	HugePages int
	// Nice is the nice value every thread of the daemon runs at (0: as
	// started). The daemon serves the faults of the VMs on its host, so
	// below 0 it does not queue behind their vCPUs for a CPU: a vCPU
	// waiting on a fault, or a VM waiting on its pre-install, waits for
	// the daemon. Below the current value it needs CAP_SYS_NICE.
	Nice int

	// Images serves Aquifer images DIR/NAME.img from local disk (no tiers).
	Images string
	// Pod makes this host a member of a pod.
	Pod *PodConfig

	Logger   *slog.Logger
	Registry *prometheus.Registry
}

// PodConfig describes the pod pieces of a host.
type PodConfig struct {
	// Name of the pod (default "pod0").
	Name string
	// DataDir holds the embedded etcd member's data, in-process memory
	// nodes' segments and the pod secret.
	DataDir string
	// EtcdEndpoints, if set, is an external etcd cluster (https://);
	// otherwise an etcd member runs in this process with its data in
	// DataDir, serving mutual TLS with certificates in DataDir/tls.
	EtcdEndpoints []string
	// EtcdTLSDir holds an external cluster's ca.crt, client.crt and
	// client.key (what `aquifer etcd` writes to its DATA-DIR/tls); EtcdCA,
	// EtcdCert and EtcdKey name them one by one instead. EtcdUser and
	// EtcdPasswordFile add (or, with a CA only, replace the certificate by)
	// an etcd user. See tls.go.
	EtcdTLSDir, EtcdCA, EtcdCert, EtcdKey string
	EtcdUser, EtcdPasswordFile            string
	// CXL is the pod's CXL region: "shm:PATH" (the emulated region, a
	// shared memory file; created and formatted on first start),
	// "devdax:/dev/daxX.Y" (a real device, formatted with `aquifer cxl
	// format`) or "none" (every hot set is served from its RDMA copy).
	// Default "shm:/dev/shm/aquifer-<name>-cxl".
	CXL string
	// CXLSize and CXLChunk size a new emulated region (defaults 1 GiB and
	// 64 MiB: the largest hot segment one extent holds).
	CXLSize, CXLChunk int64
	// RDMA is how the pager reads memory nodes: "emu" (in-process nodes
	// behind the documented latency model; figures are emulated), "tcp"
	// (the memory-node protocol over TCP) or "verbs" (one-sided RDMA READs
	// through an RNIC; needs a binary built with -tags rdma). Default emu
	// for in-process nodes, tcp for external ones.
	RDMA string
	// MemNodes in-process memory nodes (default 3) unless MemNodeAddrs
	// names external `aquifer memnode` processes.
	MemNodes     int
	MemNodeAddrs []string
	// MemNodeCapacity in bytes per node (default 4 GiB, reserved lazily).
	MemNodeCapacity uint64
	// Replicas per segment (default min(2, nodes)).
	Replicas int
	// MemNodeDeadAfter is how long a memory node the catalog references
	// may be missing from the control plane before its segments are
	// re-replicated elsewhere (default 10s).
	MemNodeDeadAfter time.Duration
	// MemNodeGCInterval is how often the memory tier's leader sweeps the
	// memory nodes for segments no catalog entry lists (default 1m), and
	// MemNodeOrphanGrace how old such a segment must be to be deleted
	// (default 10m).
	MemNodeGCInterval, MemNodeOrphanGrace time.Duration
	// SecretFile holds the pod's admission secret (default
	// DataDir/pod.secret, created for in-process nodes; external nodes need
	// it to exist: `aquifer pool init`).
	SecretFile string
	// HostName names this host in the pod (default the machine's host
	// name). A restarted daemon with the same name takes over from its
	// crashed predecessor at once; another live daemon may not use it.
	HostName string
	// HostAddr is this host's address in the pod (recorded in its member
	// record; the source address of its memory-node connections).
	HostAddr string
	// ReaderSlots extra CXL reader identities (host slots from the pod's
	// slot table) so that restores pre-install from the hot tier
	// concurrently: the number of concurrent pre-installs is ReaderSlots,
	// default twice the cores and at least 8 (defaultReaderSlots); -1 for
	// none (reads share the owner identity).
	ReaderSlots int
	// LeaseTTL is the time to live in seconds (default 10) of this host's
	// leases: its pod membership (a host silent for that long is fenced
	// and its slots and chunks are reclaimed) and its and its memory nodes'
	// registrations.
	LeaseTTL int64
	// MemNodeAccess: mutual TLS to memory nodes, and memory nodes taken
	// from the control plane (memsec.go).
	MemNodeAccess
}

// FieldError is a Config validation error: Field is the option's
// `aquifer serve` flag name.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return fmt.Sprintf("--%s: %v", e.Field, e.Err) }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// backend is a parsed "kind:arg" option.
type backend struct{ kind, arg string }

func parseCXL(s, pod string) (backend, error) {
	if s == "" {
		return backend{"shm", fmt.Sprintf("/dev/shm/aquifer-%s-cxl", pod)}, nil
	}
	if s == "none" {
		return backend{kind: "none"}, nil
	}
	kind, arg, ok := strings.Cut(s, ":")
	if !ok || arg == "" || (kind != "shm" && kind != "devdax") {
		return backend{}, fieldErr("cxl", "%q: want shm:PATH (emulated region), devdax:/dev/daxX.Y (a CXL device) or none", s)
	}
	if !filepath.IsAbs(arg) {
		return backend{}, fieldErr("cxl", "%q: give an absolute path", s)
	}
	return backend{kind, arg}, nil
}

// defaults fills every default of a pod config and validates it.
func (c *PodConfig) defaults() error {
	if c.Name == "" {
		c.Name = "pod0"
	}
	if !validPod(c.Name) {
		return fieldErr("pod", "%q: use letters, digits, '.', '_' or '-'", c.Name)
	}
	if c.DataDir == "" {
		return fieldErr("data-dir", "a pod needs a data directory")
	}
	if err := c.etcdDefaults(); err != nil {
		return err
	}
	if err := c.memnodeAccessDefaults(); err != nil {
		return err
	}
	if len(c.MemNodeAddrs) > 0 {
		if c.MemNodes != 0 && c.MemNodes != len(c.MemNodeAddrs) {
			return fieldErr("memnodes", "%d in-process memory nodes and %d external ones (--memnode-addrs): give one or the other", c.MemNodes, len(c.MemNodeAddrs))
		}
		for _, a := range c.MemNodeAddrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fieldErr("memnode-addrs", "%q: %w", a, err)
			}
		}
		c.MemNodes = len(c.MemNodeAddrs)
	}
	if c.MemNodes < 0 {
		return fieldErr("memnodes", "%d: want at least 1", c.MemNodes)
	}
	if c.MemNodes == 0 && !c.MemNodesFromControlPlane {
		c.MemNodes = 3
	}
	if c.Replicas < 0 || (c.Replicas > c.MemNodes && !c.MemNodesFromControlPlane) {
		return fieldErr("replicas", "%d copies on %d memory nodes", c.Replicas, c.MemNodes)
	}
	if c.Replicas == 0 {
		c.Replicas = min(2, c.MemNodes)
	}
	if c.MemNodeCapacity == 0 {
		c.MemNodeCapacity = 4 << 30
	}
	switch c.RDMA {
	case "":
		c.RDMA = "emu"
		if len(c.MemNodeAddrs) > 0 {
			c.RDMA = "tcp"
		}
	case "emu":
		if len(c.MemNodeAddrs) > 0 {
			return fieldErr("rdma", "emu models in-process memory nodes; external ones (--memnode-addrs) are read with tcp or verbs")
		}
	case "tcp", "verbs":
	default:
		return fieldErr("rdma", "%q: want emu, tcp or verbs", c.RDMA)
	}
	cxl, err := parseCXL(c.CXL, c.Name)
	if err != nil {
		return err
	}
	if cxl.kind != "shm" && (c.CXLSize != 0 || c.CXLChunk != 0) {
		return fieldErr("cxl-size", "sizes apply to an emulated region (shm:PATH) only; a %s region was formatted with `aquifer cxl format`", cxl.kind)
	}
	if c.CXLSize == 0 {
		c.CXLSize = 1 << 30
	}
	if c.CXLChunk == 0 {
		c.CXLChunk = 64 << 20
	}
	if c.CXLSize < 0 || c.CXLChunk <= 0 {
		return fieldErr("cxl-size", "region %d bytes, chunks %d bytes: both must be positive", c.CXLSize, c.CXLChunk)
	}
	if c.SecretFile == "" {
		c.SecretFile = filepath.Join(c.DataDir, SecretFileName)
	}
	switch {
	case c.ReaderSlots == 0:
		c.ReaderSlots = defaultReaderSlots()
	case c.ReaderSlots < 0:
		c.ReaderSlots = 0
	}
	if c.HostName == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "host"
		}
		c.HostName = sanitizeID(h)
	}
	if !validPod(c.HostName) {
		return fieldErr("host-name", "%q: use letters, digits, '.', '_' or '-'", c.HostName)
	}
	if c.HostAddr != "" && net.ParseIP(c.HostAddr) == nil {
		return fieldErr("host-addr", "%q is not an IP address", c.HostAddr)
	}
	if c.LeaseTTL < 0 {
		return fieldErr("lease-ttl", "%d: want a positive number of seconds", c.LeaseTTL)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10
	}
	return nil
}

func validPod(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Validate checks c and fills in its defaults. Start calls it.
func (c *Config) Validate() error {
	if err := prio.Check(c.Nice); err != nil {
		return fieldErr("nice", "%v", err)
	}
	if c.API == "" {
		return fieldErr("api", "no control API socket")
	}
	if len(c.API) > 107 {
		return fieldErr("api", "%q is longer than a Unix socket path may be (107 bytes)", c.API)
	}
	if (c.Images == "") == (c.Pod == nil) {
		return errors.New("give exactly one mode: --embedded (this host in a pod) or --images DIR (local image files)")
	}
	if c.Images != "" {
		if st, err := os.Stat(c.Images); err != nil || !st.IsDir() {
			return fieldErr("images", "%s is not a directory", c.Images)
		}
	}
	if c.SocketDir == "" {
		c.SocketDir = filepath.Join(filepath.Dir(c.API), "vms")
	}
	if c.LearnedCold == 0 {
		c.LearnedCold = DefaultLearnedCold
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Clean(c.SocketDir) + ".state"
	}
	if filepath.Clean(c.StateDir) == filepath.Clean(c.SocketDir) {
		return fieldErr("state-dir", "%s is the socket directory: give the VMs' records a directory of their own", c.StateDir)
	}
	if c.HandoffSocket == "" {
		c.HandoffSocket = c.API + ".handoff"
		if len(c.HandoffSocket) > 107 {
			c.HandoffSocket = "none" // warned about when serving
		}
	}
	if c.HandoffSocket != "none" && len(c.HandoffSocket) > 107 {
		return fieldErr("handoff-socket", "%q is longer than a Unix socket path may be (107 bytes): give a shorter one, or none", c.HandoffSocket)
	}
	if c.HandoffFrom != "" {
		if err := c.handoffPossible(); err != nil {
			return err
		}
	}
	if c.Workers < 0 {
		return fieldErr("workers", "%d: want at least 1", c.Workers)
	}
	if c.Workers == 0 {
		c.Workers = 2
	}
	if c.VMMUID < -1 {
		return fieldErr("vmm-uid", "%d is not a uid", c.VMMUID)
	}
	if err := c.validateHugePages(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Pod != nil {
		if err := c.Pod.defaults(); err != nil {
			return err
		}
		if err := c.Pod.available(); err != nil {
			return err
		}
	}
	return nil
}

// handoffPossible refuses a handoff that could not be without a stall:
// the pieces a daemon runs in-process (an embedded etcd member, memory
// nodes on loopback) cannot be in two processes at once.
func (c *Config) handoffPossible() error {
	if c.Pod == nil {
		return nil
	}
	if len(c.Pod.EtcdEndpoints) == 0 {
		return fieldErr("handoff-from", "this pod's etcd member runs inside the daemon (no --etcd-endpoints), and its data directory cannot be served by two processes: upgrade without a stall needs etcd run separately (aquifer etcd); or stop and start the daemon instead (its VMs are re-adopted, each pausing for the restart)")
	}
	if len(c.Pod.MemNodeAddrs) == 0 {
		return fieldErr("handoff-from", "this pod's memory nodes run inside the daemon (no --memnode-addrs) and would stop with it: upgrade without a stall needs them run separately (aquifer memnode); or stop and start the daemon instead (its VMs are re-adopted, each pausing for the restart)")
	}
	return nil
}

// available refuses, before anything starts, backends this machine cannot
// provide.
func (c *PodConfig) available() error {
	cxl, _ := parseCXL(c.CXL, c.Name)
	if cxl.kind == "devdax" {
		if _, err := os.Stat(cxl.arg); err != nil {
			have := devdax.Devices()
			hint := "this machine has no /dev/dax* device; use shm:PATH for the emulated region"
			if len(have) > 0 {
				hint = "devices here: " + strings.Join(have, ", ")
			}
			return fieldErr("cxl", "devdax:%s: %v (%s)", cxl.arg, errors.Unwrap(err), hint)
		}
		if _, _, err := devdax.Info(cxl.arg); err != nil {
			return fieldErr("cxl", "devdax:%s: %w", cxl.arg, err)
		}
	}
	if c.RDMA == "verbs" {
		if err := verbsAvailable(); err != nil {
			return fieldErr("rdma", "verbs: %w", err)
		}
	}
	return nil
}

// defaultReaderSlots is the number of CXL reader identities a host takes
// when its configuration names none: twice its cores, and at least
// minDefaultReaders. Each concurrent pre-install holds one; a restore that
// finds none free waits for one with its VM stopped, while the cores run
// other VMs' vCPUs. On a 2-core host at eight restores at once, 8 readers
// instead of 4 took aquifer from 1.16-1.25x to 1.26-1.32x vs REAP over four
// alternating pairs (docs/evaluation.md, cut 30). A reader costs one slot
// of the pod's slot table (64 on a region formatted by default), shared by
// the pod's hosts; a host that finds fewer free joins with what is left.
func defaultReaderSlots() int { return max(2*runtime.NumCPU(), minDefaultReaders) }

// minDefaultReaders is the fewest reader identities a host takes by
// default: one per concurrent restore of the benchmark's highest level.
const minDefaultReaders = 8

// raiseNice sets every thread of this process to nice (0: leaves them),
// before anything else starts (threads made later inherit it).
func raiseNice(nice int) error {
	if nice == 0 {
		return nil
	}
	if err := prio.Raise(nice); err != nil {
		return fieldErr("nice", "%v", err)
	}
	return nil
}
