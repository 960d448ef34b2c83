package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/embed"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// podFlags are the flags of serve that apply to --embedded only.
var podFlags = []string{"data-dir", "etcd-endpoints", "etcd-tls-dir", "etcd-ca", "etcd-cert", "etcd-key", "etcd-user",
	"etcd-password-file", "lease-ttl", "pod", "memnodes", "memnode-addrs", "rdma", "cxl", "cxl-path",
	"cxl-size", "cxl-chunk", "secret-file", "replicas", "host-name", "host-addr", "readers", "memnode-capacity", "memnode-dead-after",
	"memnode-tls-dir", "memnodes-from-control-plane"}

func init() {
	var (
		cfg                                 embed.Config
		pc                                  embed.PodConfig
		embedded                            bool
		cxlSize, cxlChunk, cxlPath, nodeCap string
		learned                             string
	)
	cmd := &cobra.Command{
		Use:   "serve (--embedded | --images DIR)",
		Short: "Run the per-host pager daemon: restore many VMs from the pool",
		Long: `serve runs the pager daemon. Its control API (HTTP on the Unix socket --api,
mode 0600) prepares restores: PUT /v1/vms/{id} {"snapshot": NAME} returns the
UFFD socket to give Firecracker as mem_backend.backend_path; GET
/v1/vms/{id}/ready returns once the hot set is installed, when the VM may be
resumed. See docs/operations.md.

With --embedded this host is a member of a pod and runs what the pod needs
that it is not told to find elsewhere: an etcd member serving mutual TLS
only, certificates in DATA-DIR/tls (unless --etcd-endpoints https://...
with --etcd-tls-dir, or --etcd-ca/--etcd-cert/--etcd-key and
--etcd-user/--etcd-password-file), memory nodes on loopback (unless --memnode-addrs names
aquifer memnode processes, admitted with the pod secret --secret-file or, with
--memnode-tls-dir, over mutual TLS; or --memnodes-from-control-plane takes the
memory nodes registered in the control plane), and
the pod's CXL region (--cxl shm:PATH, the emulated region, created on first
start; devdax:/dev/daxX.Y, a real device formatted with aquifer cxl format;
or none). aquifer publish / pool ls / pool rm talk to it through the same
API. aquifer pool init prepares the data directory, secret and region
beforehand; without it they are created on first start.

With --images DIR, snapshots are Aquifer images DIR/NAME.img on local disk
(no tiers).

Every VM served is recorded in --state-dir: a daemon started again on the
same directories (after a crash, a SIGKILL or a stop) takes back every VM
whose Firecracker still runs and serves it on. For an upgrade without any
stall, start the new binary with --handoff-from (the running daemon's
handoff socket, API.handoff): it receives the running daemon's VMs, locks
and API socket, serves, and only then does the old one stop and exit. See
docs/operations.md, "Upgrades and crashes".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := podMode(cmd, embedded, cfg.Images); err != nil {
				return err
			}
			if embedded {
				if err := podSizes(cmd, &pc, cxlSize, cxlChunk, cxlPath); err != nil {
					return err
				}
				n, err := parseSize(nodeCap)
				if err != nil {
					return fmt.Errorf("--memnode-capacity: %w", err)
				}
				pc.MemNodeCapacity = n
				if pc.MemNodesFromControlPlane && !cmd.Flags().Changed("memnodes") {
					pc.MemNodes = 0 // the default counts in-process nodes
				}
				cfg.Pod = &pc
			}
			n, err := parseSize(learned)
			if err != nil {
				return fmt.Errorf("--learned-cold: %w", err)
			}
			if cfg.LearnedCold = int64(n); n == 0 {
				cfg.LearnedCold = -1 // off
			}
			cfg.API = client.Socket(cfg.API)
			if err := cfg.Validate(); err != nil { // fills in the defaults logged below
				return err
			}
			s, err := embed.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer s.Stop()
			if s.Pool != nil {
				slog.Info("pod member running", "pod", pc.Name, "etcd", s.Plane.Endpoints, "memnodes", s.MemNodes,
					"rdma", pc.RDMA, "cxl", pc.CXL, "data_dir", pc.DataDir)
			}
			slog.Info("pager daemon serving", "api", cfg.API, "socket_dir", cfg.SocketDir, "state_dir", cfg.StateDir, "handoff_socket", cfg.HandoffSocket)
			err = s.Serve(ctx)
			select {
			case <-s.HandedOver():
				slog.Info("every VM handed over to the successor: exiting")
			default:
				if err == nil {
					slog.Info("pager daemon stopping: a daemon started again on the same directories takes back the VMs still running", "api", cfg.API)
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.API, "api", "", "control API socket (default $AQUIFER_API, else "+client.DefaultSocket+")")
	f.StringVar(&cfg.SocketDir, "socket-dir", "", "directory of per-VM UFFD sockets, one daemon's own (default: vms/ beside --api)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "directory of the served VMs' records, which a restarted daemon takes its VMs back from (default: the socket directory's name with .state, beside it)")
	f.StringVar(&cfg.HandoffFrom, "handoff-from", "", "take over the running daemon waiting at this handoff socket (its --api with .handoff): its VMs, locks and API socket, without a stall (an upgrade)")
	f.StringVar(&cfg.HandoffSocket, "handoff-socket", "", "where this daemon waits for a successor started with --handoff-from (default: --api with .handoff; none: never)")
	f.StringVar(&cfg.Images, "images", "", "serve Aquifer images NAME.img from this directory (no tiers)")
	f.IntVar(&cfg.Workers, "workers", 2, "fault-serving threads per VM")
	f.IntVar(&cfg.Nice, "nice", 0, "nice value of the daemon's threads, -20..19 (below 0: pre-installs and faults do not wait behind the VMs' vCPUs for a CPU; needs CAP_SYS_NICE)")
	f.BoolVar(&cfg.EarlyResume, "early-resume", false, "report VMs ready once zero runs are set up and stream the hot set in while they run (default: after the whole hot set is installed)")
	f.StringVar(&learned, "learned-cold", "8MiB", "cold pages (in bytes) per snapshot learned from its restores' cold faults and installed before later restores of it resume, so that their guests do not fault on them (0: off)")
	f.IntVar(&cfg.VMMUID, "vmm-uid", -1, "uid Firecracker runs as (under the jailer): the only uid admitted on VM sockets (default: this daemon's uid)")
	f.IntVar(&cfg.HugePages, "huge-pages", 0, "2 MiB huge pages this host's 2 MiB (hugetlbfs) guests hold at once: refuse to start unless the hugetlb pool has them (vm.nr_hugepages), and warm them (0: no check)")
	f.DurationVar(&cfg.AcceptTimeout, "accept-timeout", 0, "give up on a prepared VM whose Firecracker has not connected after this long (default 60s)")
	f.BoolVar(&embedded, "embedded", false, "run this host as a member of a pod: etcd, memory nodes and the CXL region as the flags below say")
	f.StringVar(&pc.DataDir, "data-dir", "/var/lib/aquifer", "with --embedded: data directory (etcd, memory nodes, pod secret)")
	f.StringSliceVar(&pc.EtcdEndpoints, "etcd-endpoints", nil, "with --embedded: use this external etcd cluster (https://host:2379,...) instead of an embedded member")
	f.StringVar(&pc.EtcdTLSDir, "etcd-tls-dir", "", "with --etcd-endpoints: directory holding ca.crt, client.crt and client.key (what aquifer etcd writes to its DATA-DIR/tls)")
	f.StringVar(&pc.EtcdCA, "etcd-ca", "", "with --etcd-endpoints: CA certificate of the etcd cluster (overrides --etcd-tls-dir's)")
	f.StringVar(&pc.EtcdCert, "etcd-cert", "", "with --etcd-endpoints: client certificate (with --etcd-key; overrides --etcd-tls-dir's)")
	f.StringVar(&pc.EtcdKey, "etcd-key", "", "with --etcd-endpoints: client key, mode 0600")
	f.StringVar(&pc.EtcdUser, "etcd-user", "", "with --etcd-endpoints: etcd user (etcd's own authentication; with --etcd-password-file)")
	f.StringVar(&pc.EtcdPasswordFile, "etcd-password-file", "", "with --etcd-user: file holding the password, mode 0600")
	f.Int64Var(&pc.LeaseTTL, "lease-ttl", 10, "with --embedded: seconds of silence after which this host is fenced: its registrations, pod slots and CXL chunks are reclaimed")
	f.StringVar(&pc.Name, "pod", "pod0", "with --embedded: pod name (its coordination keys in etcd and its default region path)")
	f.IntVar(&pc.MemNodes, "memnodes", 3, "with --embedded: in-process memory nodes")
	f.StringSliceVar(&pc.MemNodeAddrs, "memnode-addrs", nil, "with --embedded: use these aquifer memnode processes (host:port,...) instead of in-process ones")
	f.StringVar(&pc.MemNodeTLSDir, "memnode-tls-dir", "", "with external memory nodes: directory holding ca.crt and this host's certificate host.crt/host.key (aquifer cert host): speak to memory nodes over mutual TLS instead of admitting with the pod secret")
	f.BoolVar(&pc.MemNodesFromControlPlane, "memnodes-from-control-plane", false, "with --embedded: use the memory nodes registered in the control plane (aquifer memnode --etcd-endpoints) instead of --memnode-addrs; new segments follow the nodes that join and leave and the usage they report")
	f.StringVar(&nodeCap, "memnode-capacity", "4GiB", "with --embedded: capacity of each memory node (in-process ones reserve it lazily; external ones are recorded with it)")
	f.DurationVar(&pc.MemNodeDeadAfter, "memnode-dead-after", 10*time.Second, "with --embedded: a memory node missing from the control plane this long is declared dead and its segments are re-replicated")
	f.DurationVar(&pc.MemNodeGCInterval, "memnode-gc-interval", time.Minute, "with --embedded: how often the memory tier's leader looks for segments on the memory nodes that no snapshot lists (left by a failed delete or an interrupted publish)")
	f.DurationVar(&pc.MemNodeOrphanGrace, "memnode-orphan-grace", 10*time.Minute, "with --embedded: a segment no snapshot lists is deleted once its node has held it this long (covers publishes still in flight)")
	f.IntVar(&pc.Replicas, "replicas", 0, "with --embedded: copies of each segment on the memory nodes (default 2, or 1 with one node)")
	f.StringVar(&pc.RDMA, "rdma", "", "with --embedded: how the pager reads memory nodes: emu (latency model, emulated; default with in-process nodes), tcp (default with --memnode-addrs) or verbs (RNIC; binary built with -tags rdma)")
	f.StringVar(&pc.CXL, "cxl", "", "with --embedded: the pod's CXL region: shm:PATH (emulated), devdax:/dev/daxX.Y or none (default shm:/dev/shm/aquifer-POD-cxl)")
	f.StringVar(&cxlPath, "cxl-path", "", "with --embedded: emulated CXL region file (same as --cxl shm:PATH)")
	f.StringVar(&cxlSize, "cxl-size", "1GiB", "with --embedded: size of a new emulated CXL region")
	f.StringVar(&cxlChunk, "cxl-chunk", "64MiB", "with --embedded: chunk size of a new emulated CXL region (the largest hot segment)")
	f.StringVar(&pc.SecretFile, "secret-file", "", "with --embedded: the pod secret file (default DATA-DIR/pod.secret)")
	f.StringVar(&pc.HostName, "host-name", "", "with --embedded: this host's name in the pod (default the machine's host name; one daemon per name)")
	f.StringVar(&pc.HostAddr, "host-addr", "", "with --embedded: this host's IP address in the pod (source address of its memory-node connections)")
	f.IntVar(&pc.ReaderSlots, "readers", 0, "with --embedded: CXL reader identities, the concurrent pre-installs of this host (default twice its cores, at least 8; -1: none)")
	register(cmd)
}

// podMode refuses flags that do not apply to the chosen mode.
func podMode(cmd *cobra.Command, embedded bool, images string) error {
	switch {
	case embedded && images != "":
		return fmt.Errorf("--embedded and --images are two modes: give one")
	case !embedded && images == "":
		return fmt.Errorf("give --embedded (this host in a pod) or --images DIR (local images)")
	case images != "":
		var bad []string
		cmd.Flags().Visit(func(f *pflag.Flag) {
			for _, n := range podFlags {
				if f.Name == n {
					bad = append(bad, "--"+n)
				}
			}
		})
		if len(bad) > 0 {
			return fmt.Errorf("%v apply to --embedded only, not to --images", bad)
		}
	}
	return nil
}

// podSizes applies the size flags a user set (the defaults apply to a new
// emulated region only, so unset ones are left to embed).
func podSizes(cmd *cobra.Command, pc *embed.PodConfig, size, chunk, path string) error {
	if path != "" {
		if pc.CXL != "" {
			return fmt.Errorf("--cxl-path and --cxl both name the region: give --cxl shm:%s", path)
		}
		pc.CXL = "shm:" + absPath(path)
	}
	if cmd.Flags().Changed("cxl-size") {
		n, err := parseSize(size)
		if err != nil {
			return fmt.Errorf("--cxl-size: %w", err)
		}
		pc.CXLSize = int64(n)
	}
	if cmd.Flags().Changed("cxl-chunk") {
		n, err := parseSize(chunk)
		if err != nil {
			return fmt.Errorf("--cxl-chunk: %w", err)
		}
		pc.CXLChunk = int64(n)
	}
	return nil
}
