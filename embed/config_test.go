package embed

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// TestHandoffConfig: the state directory and handoff socket default beside
// the socket directory and the API socket; a handoff is refused, naming
// the flag, when the pod's etcd member or memory nodes run in the daemon.
func TestHandoffConfig(t *testing.T) {
	dir := t.TempDir()
	c := Config{API: filepath.Join(dir, "api.sock"), Images: dir}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.StateDir != filepath.Join(dir, "vms.state") || c.HandoffSocket != c.API+".handoff" {
		t.Fatalf("defaults: state %s, handoff %s", c.StateDir, c.HandoffSocket)
	}
	long := Config{API: "/" + strings.Repeat("a", 100), Images: dir}
	if err := long.Validate(); err != nil || long.HandoffSocket != "none" {
		t.Fatalf("an API path too long for .handoff: %v %q", err, long.HandoffSocket)
	}
	same := Config{API: filepath.Join(dir, "api.sock"), Images: dir, SocketDir: filepath.Join(dir, "x"), StateDir: filepath.Join(dir, "x")}
	var fe *FieldError
	if err := same.Validate(); !errors.As(err, &fe) || fe.Field != "state-dir" {
		t.Fatalf("state directory = socket directory: %v", err)
	}
	for name, pod := range map[string]*PodConfig{
		"embedded etcd":       {DataDir: dir},
		"in-process memnodes": {DataDir: dir, EtcdEndpoints: []string{"https://127.0.0.1:2379"}, EtcdTLSDir: dir},
	} {
		c := Config{API: filepath.Join(dir, "api.sock"), Pod: pod, HandoffFrom: filepath.Join(dir, "api.sock.handoff")}
		err := c.Validate()
		if !errors.As(err, &fe) || fe.Field != "handoff-from" {
			t.Errorf("%s: %v", name, err)
		}
	}
}
