package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/internal/atomicfile"
)

// Config describes a local cluster.
type Config struct {
	// Dir holds everything (created; mode 0700).
	Dir string
	// Pods, HostsPerPod, MemNodes and EtcdMembers (1 or 3) size it.
	Pods, HostsPerPod, MemNodes, EtcdMembers int
	// Bin is the aquifer binary (default: this executable).
	Bin string
	// CXLSize and CXLChunk size each pod's emulated region (defaults 1 GiB
	// and 64 MiB); MemNodeCapacity each memory node (default 2 GiB).
	CXLSize, CXLChunk, MemNodeCapacity uint64
	// Replicas of each segment on the memory nodes (default min(2, nodes)).
	Replicas int
	// LeaseTTL of the hosts' pod leases in seconds (default 10).
	LeaseTTL int
	// Readers per host (CXL reader identities; default the daemon's).
	Readers int
	// MemNodeDeadAfter is how long a memory node may stay unregistered
	// before its segments are copied elsewhere (default the daemon's, 10s).
	MemNodeDeadAfter time.Duration
	// Timeout bounds Up (default 2 minutes).
	Timeout time.Duration
	// Progress receives one line per step (nil: quiet).
	Progress io.Writer
}

func (c *Config) defaults() error {
	if c.Dir == "" {
		return errors.New("--dir: give the cluster a directory")
	}
	abs, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	c.Dir = abs
	switch {
	case c.Pods < 1:
		return fmt.Errorf("--pods %d: want at least 1", c.Pods)
	case c.HostsPerPod < 1:
		return fmt.Errorf("--hosts-per-pod %d: want at least 1", c.HostsPerPod)
	case c.MemNodes < 1:
		return fmt.Errorf("--memnodes %d: want at least 1", c.MemNodes)
	case c.Pods*c.HostsPerPod > 250:
		return fmt.Errorf("%d hosts: at most 250 loopback addresses 127.0.0.2..251", c.Pods*c.HostsPerPod)
	}
	if c.EtcdMembers == 0 {
		c.EtcdMembers = 1
	}
	if c.EtcdMembers != 1 && c.EtcdMembers != 3 {
		return fmt.Errorf("--etcd %d: want 1 or 3 members", c.EtcdMembers)
	}
	if c.Bin == "" {
		if c.Bin, err = os.Executable(); err != nil {
			return err
		}
	}
	if c.CXLSize == 0 {
		c.CXLSize = 1 << 30
	}
	if c.CXLChunk == 0 {
		c.CXLChunk = 64 << 20
	}
	if c.MemNodeCapacity == 0 {
		c.MemNodeCapacity = 2 << 30
	}
	if c.Replicas == 0 {
		c.Replicas = min(2, c.MemNodes)
	}
	if c.Replicas < 1 || c.Replicas > c.MemNodes {
		return fmt.Errorf("--replicas %d on %d memory nodes", c.Replicas, c.MemNodes)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10
	}
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Minute
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	// The longest socket path a host's daemon makes must fit a sun_path.
	if p := filepath.Join(c.Dir, fmt.Sprintf("pod%d", c.Pods), fmt.Sprintf("host%d", c.HostsPerPod), "vms", ".9999999.vm999999.sock"); len(p) > 107 {
		return fmt.Errorf("--dir %s is too long for the Unix sockets under it (%d bytes > 107): use a shorter path", c.Dir, len(p))
	}
	return nil
}

// Up starts the cluster and returns its state once every process serves.
// On error everything it started is stopped again.
func Up(ctx context.Context, c Config) (s *State, err error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	if old, err := Load(c.Dir); err == nil {
		for _, p := range old.procs() {
			if p.Alive() {
				return nil, fmt.Errorf("a cluster is already running in %s (pid %d): stop it with aquifer cluster down --dir %s", c.Dir, p.PID, c.Dir)
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	s = &State{Version: 1, Dir: c.Dir, Bin: c.Bin, Secret: filepath.Join(c.Dir, "cluster.secret"), ClientTLS: filepath.Join(c.Dir, "tls")}
	defer func() {
		if err != nil {
			s.stop(5 * time.Second)
			s.save()
		}
	}()
	steps := []struct {
		what string
		fn   func(context.Context, *Config) error
	}{
		{"secret", s.writeSecret},
		{"regions", s.initPods},
		{"control plane", s.startEtcd},
		{"memory nodes", s.startMemNodes},
		{"hosts", s.startHosts},
	}
	for _, st := range steps {
		t0 := time.Now()
		if err := st.fn(ctx, &c); err != nil {
			return s, fmt.Errorf("starting the cluster (%s): %w", st.what, err)
		}
		if err := s.save(); err != nil {
			return s, err
		}
		fmt.Fprintf(c.Progress, "%-14s ready in %v\n", st.what, time.Since(t0).Round(time.Millisecond))
	}
	return s, nil
}

func (s *State) writeSecret(_ context.Context, c *Config) error {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	return atomicfile.WriteFile(s.Secret, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600)
}

// regionPath names pod i's emulated region, unique per cluster directory.
func regionPath(dir string, i int) string {
	h := sha256.Sum256([]byte(dir))
	return fmt.Sprintf("/dev/shm/aquifer-cluster-%s-pod%d-cxl", hex.EncodeToString(h[:6]), i)
}

// initPods formats each pod's region before any host starts, so that the
// hosts of a pod never race to create it.
func (s *State) initPods(ctx context.Context, c *Config) error {
	for i := 1; i <= c.Pods; i++ {
		p := &Pod{Name: fmt.Sprintf("pod%d", i), CXL: "shm:" + regionPath(c.Dir, i), Dir: filepath.Join(c.Dir, fmt.Sprintf("pod%d", i))}
		os.Remove(regionPath(c.Dir, i))
		out, err := exec.CommandContext(ctx, c.Bin, "pool", "init", "--data-dir", p.Dir, "--pod", p.Name, "--cxl", p.CXL,
			"--cxl-size", fmt.Sprint(c.CXLSize), "--cxl-chunk", fmt.Sprint(c.CXLChunk), "--secret-file", s.Secret).CombinedOutput()
		if err != nil {
			return fmt.Errorf("pool init for %s: %v: %s", p.Name, err, bytes.TrimSpace(out))
		}
		s.Pods = append(s.Pods, p)
	}
	return nil
}

func freeAddr(ip string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (s *State) startEtcd(ctx context.Context, c *Config) error {
	var initial []string
	for k := 1; k <= c.EtcdMembers; k++ {
		client, err := freeAddr("127.0.0.1")
		if err != nil {
			return err
		}
		peer, err := freeAddr("127.0.0.1")
		if err != nil {
			return err
		}
		e := &EtcdMember{Name: fmt.Sprintf("etcd%d", k), Client: "https://" + client, Peer: peer, Dir: filepath.Join(c.Dir, fmt.Sprintf("etcd%d", k))}
		os.RemoveAll(e.Dir)
		s.Etcd = append(s.Etcd, e)
		initial = append(initial, e.Name+"=https://"+peer)
	}
	// The members share one CA (the cluster's); the daemons get the CA
	// certificate and the client certificate only, never the CA's key.
	os.RemoveAll(s.etcdTLSDir())
	for _, e := range s.Etcd {
		args := []string{"etcd", "--name", e.Name, "--data-dir", e.Dir, "--tls-dir", s.etcdTLSDir(),
			"--client-addr", strings.TrimPrefix(e.Client, "https://"), "--peer-addr", e.Peer}
		if len(s.Etcd) > 1 {
			args = append(args, "--initial-cluster", strings.Join(initial, ","))
		}
		if err := s.spawn(&e.Proc, c.Bin, e.Dir+".log", args...); err != nil {
			return err
		}
	}
	for {
		if err := s.copyClientTLS(); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			p, err := s.connect(cctx)
			cancel()
			if err == nil {
				p.Close()
				return nil
			}
		}
		if err := s.waitOrDie(ctx, s.etcdProcs()); err != nil {
			return err
		}
	}
}

func (s *State) etcdTLSDir() string { return filepath.Join(s.Dir, "etcd-tls") }

// copyClientTLS gives the daemons (and this command) the cluster CA's
// certificate and the client certificate in a directory of their own.
func (s *State) copyClientTLS() error {
	if err := os.MkdirAll(s.ClientTLS, 0o700); err != nil {
		return err
	}
	for _, f := range []string{"ca.crt", "client.crt", "client.key"} {
		b, err := os.ReadFile(filepath.Join(s.etcdTLSDir(), f))
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(filepath.Join(s.ClientTLS, f), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (s *State) etcdProcs() []*Proc {
	var out []*Proc
	for _, e := range s.Etcd {
		out = append(out, &e.Proc)
	}
	return out
}

func (s *State) startMemNodes(ctx context.Context, c *Config) error {
	for k := 1; k <= c.MemNodes; k++ {
		addr, err := freeAddr("127.0.0.1")
		if err != nil {
			return err
		}
		maddr, err := freeAddr("127.0.0.1")
		if err != nil {
			return err
		}
		m := &MemNode{Name: fmt.Sprintf("memnode%d", k), Addr: addr, Metrics: maddr, Dir: filepath.Join(c.Dir, "memnodes", fmt.Sprintf("m%d", k)), Capacity: c.MemNodeCapacity}
		os.RemoveAll(m.Dir)
		if err := os.MkdirAll(m.Dir, 0o700); err != nil {
			return err
		}
		s.MemNodes = append(s.MemNodes, m)
		sec, err := s.memnodeArgs(m, c.LeaseTTL)
		if err != nil {
			return err
		}
		if err := s.spawn(&m.Proc, c.Bin, m.Dir+".log", append([]string{"memnode", "--name", m.Name, "--listen", m.Addr, "--metrics-listen", m.Metrics,
			"--capacity", fmt.Sprint(m.Capacity), "--data-dir", m.Dir}, sec...)...); err != nil {
			return err
		}
	}
	return s.waitRegistered(ctx)
}

func (s *State) startHosts(ctx context.Context, c *Config) error {
	k := 0
	for _, p := range s.Pods {
		for j := 1; j <= c.HostsPerPod; j++ {
			h := &Host{Name: fmt.Sprintf("host%d", j), Addr: fmt.Sprintf("127.0.0.%d", 2+k), Dir: filepath.Join(p.Dir, fmt.Sprintf("host%d", j))}
			k++
			h.API = filepath.Join(h.Dir, "api.sock")
			os.RemoveAll(h.Dir)
			if err := os.MkdirAll(h.Dir, 0o700); err != nil {
				return err
			}
			sec, err := s.hostArgs(p, h)
			if err != nil {
				return err
			}
			args := append([]string{"serve", "--embedded", "--pod", p.Name, "--host-name", h.Name, "--host-addr", h.Addr,
				"--data-dir", h.Dir, "--api", h.API, "--socket-dir", filepath.Join(h.Dir, "vms"),
				"--etcd-endpoints", strings.Join(s.Endpoints(), ","), "--etcd-tls-dir", s.ClientTLS,
				"--replicas", fmt.Sprint(c.Replicas),
				"--secret-file", s.Secret, "--cxl", p.CXL, "--rdma", "tcp", "--lease-ttl", fmt.Sprint(c.LeaseTTL)}, sec...)
			if c.Readers != 0 {
				args = append(args, "--readers", fmt.Sprint(c.Readers))
			}
			if c.MemNodeDeadAfter != 0 {
				args = append(args, "--memnode-dead-after", c.MemNodeDeadAfter.String())
			}
			p.Hosts = append(p.Hosts, h)
			if err := s.spawn(&h.Proc, c.Bin, filepath.Join(h.Dir, "serve.log"), args...); err != nil {
				return err
			}
		}
	}
	for _, p := range s.Pods {
		for _, h := range p.Hosts {
			cl := client.New(h.API, client.Options{Timeout: time.Second})
			for {
				if _, err := cl.VMs(ctx); err == nil {
					break
				}
				if err := s.waitOrDie(ctx, []*Proc{&h.Proc}); err != nil {
					return fmt.Errorf("%s/%s: %w", p.Name, h.Name, err)
				}
			}
		}
	}
	return nil
}

// spawn starts bin detached in its own session, output to logPath.
func (s *State) spawn(p *Proc, bin, logPath string, args ...string) error {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s %s: %w", bin, args[0], err)
	}
	p.PID, p.Log = cmd.Process.Pid, logPath
	if p.Start, err = startTime(p.PID); err != nil {
		return err
	}
	// The child is reaped here if it dies while Up waits for it; once Up
	// returns it belongs to init.
	go cmd.Wait()
	return s.save()
}

// waitOrDie waits a moment, failing if ctx ends or one of ps died (with
// the tail of its log).
func (s *State) waitOrDie(ctx context.Context, ps []*Proc) error {
	for _, p := range ps {
		if !p.Alive() {
			return fmt.Errorf("pid %d exited: %s", p.PID, tail(p.Log, 12))
		}
	}
	select {
	case <-ctx.Done():
		return fmt.Errorf("not serving in time: %w (logs: %s)", ctx.Err(), ps[0].Log)
	case <-time.After(50 * time.Millisecond):
		return nil
	}
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	l := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
