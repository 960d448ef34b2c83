package cluster

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"
)

// Down stops every process of the cluster in dir (hosts first, then
// memory nodes, then the control plane), SIGKILLs what has not exited
// after grace, and removes the pods' /dev/shm regions. The directory stays
// (logs, data).
func Down(dir string, grace time.Duration, w io.Writer) error {
	s, err := Load(dir)
	if err != nil {
		return err
	}
	n := s.stop(grace)
	for _, p := range s.Pods {
		os.Remove(strings.TrimPrefix(p.CXL, "shm:"))
	}
	if err := s.save(); err != nil {
		return err
	}
	fmt.Fprintf(w, "cluster in %s stopped (%d processes)\n", s.Dir, n)
	return nil
}

// stop signals the processes group by group and returns how many were
// running.
func (s *State) stop(grace time.Duration) int {
	running := 0
	var groups [][]*Proc
	var hosts, nodes, etcd []*Proc
	for _, p := range s.Pods {
		for _, h := range p.Hosts {
			hosts = append(hosts, &h.Proc)
		}
	}
	for _, m := range s.MemNodes {
		nodes = append(nodes, &m.Proc)
	}
	for _, e := range s.Etcd {
		etcd = append(etcd, &e.Proc)
	}
	groups = append(groups, hosts, nodes, etcd)
	for _, g := range groups {
		var live []*Proc
		for _, p := range g {
			if p.Alive() {
				running++
				live = append(live, p)
				syscall.Kill(p.PID, syscall.SIGTERM)
			}
		}
		deadline := time.Now().Add(grace)
		for _, p := range live {
			for p.Alive() && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if p.Alive() {
				syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
	}
	return running
}
