package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"github.com/aquifer-pool/aquifer/pki"
)

// StateFile is the name of the cluster's state file in its directory.
const StateFile = "cluster.json"

// Proc is one process of the cluster.
type Proc struct {
	PID int `json:"pid"`
	// Start is the process start time in clock ticks since boot (from
	// /proc/PID/stat): a pid reused by another process does not match.
	Start uint64 `json:"start"`
	Log   string `json:"log"`
}

// Alive reports whether the process still runs.
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	if err := syscall.Kill(p.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	st, err := startTime(p.PID)
	return err == nil && st == p.Start && !zombie(p.PID)
}

// EtcdMember is a control-plane member.
type EtcdMember struct {
	Proc
	Name   string `json:"name"`
	Client string `json:"client"`
	Peer   string `json:"peer"`
	Dir    string `json:"dir"`
}

// MemNode is a memory node.
type MemNode struct {
	Proc
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Metrics  string `json:"metrics"`
	Dir      string `json:"dir"`
	Capacity uint64 `json:"capacity_bytes"`
}

// Host is one pager daemon.
type Host struct {
	Proc
	Name string `json:"name"`
	Addr string `json:"addr"`
	API  string `json:"api"`
	Dir  string `json:"dir"`
}

// Pod is a pod: its region and hosts.
type Pod struct {
	Name  string  `json:"name"`
	CXL   string  `json:"cxl"`
	Dir   string  `json:"dir"`
	Hosts []*Host `json:"hosts"`
}

// State is what cluster.json records.
type State struct {
	Version int    `json:"version"`
	Dir     string `json:"dir"`
	Bin     string `json:"bin"`
	Secret  string `json:"secret_file"`
	// ClientTLS holds the control plane's CA certificate and the client
	// certificate the daemons (and cluster status) present.
	ClientTLS string        `json:"client_tls"`
	Etcd      []*EtcdMember `json:"etcd"`
	MemNodes  []*MemNode    `json:"memnodes"`
	Pods      []*Pod        `json:"pods"`
}

// Endpoints returns the control plane's client endpoints.
func (s *State) Endpoints() []string {
	var out []string
	for _, e := range s.Etcd {
		out = append(out, e.Client)
	}
	return out
}

// connect connects to the cluster's control plane with its client
// certificate.
func (s *State) connect(ctx context.Context) (*control.Plane, error) {
	tc, err := pki.ClientTLS(filepath.Join(s.ClientTLS, "ca.crt"), pki.Pair{CertFile: filepath.Join(s.ClientTLS, "client.crt"), KeyFile: filepath.Join(s.ClientTLS, "client.key")})
	if err != nil {
		return nil, err
	}
	return control.Connect(ctx, s.Endpoints(), control.Credentials{TLS: tc})
}

// procs lists every process, hosts first (the order Down stops them in).
func (s *State) procs() []*Proc {
	var out []*Proc
	for _, p := range s.Pods {
		for _, h := range p.Hosts {
			out = append(out, &h.Proc)
		}
	}
	for _, m := range s.MemNodes {
		out = append(out, &m.Proc)
	}
	for _, e := range s.Etcd {
		out = append(out, &e.Proc)
	}
	return out
}

func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.Dir, StateFile), append(b, '\n'), 0o600)
}

// Load reads the state of the cluster in dir.
func Load(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no cluster in %s (start one with aquifer cluster up --dir %s)", dir, dir)
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	if s.Version != 1 {
		return nil, fmt.Errorf("%s: version %d, this build reads 1", filepath.Join(dir, StateFile), s.Version)
	}
	return &s, nil
}

func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may hold spaces: fields start after ")".
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

func startTime(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil || len(f) < 20 {
		return 0, fmt.Errorf("reading the start time of pid %d: %w", pid, err)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 of stat
}

func zombie(pid int) bool {
	f, err := statFields(pid)
	return err != nil || len(f) == 0 || f[0] == "Z"
}
