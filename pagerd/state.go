package pagerd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/vmstate"
)

// vmRecord is the durable state of one VM (StateDir/ID.vm): everything a
// successor needs to serve it exactly as this daemon did. The REMOVE
// ranges the VM reported are in StateDir/ID.removes.
type vmRecord struct {
	vmstate.Record
	ID string `json:"id"`
	// Snapshot, Image and Version name what the VM is served: the
	// snapshot, its image's content ID (snapimage.Image.ID) and the
	// published version it was opened at (restore.Snapshot.Version).
	Snapshot string `json:"snapshot"`
	Image    string `json:"image"`
	Version  string `json:"version,omitempty"`
	// Socket and Seq are the VM's UFFD socket and its sequence number.
	Socket string `json:"socket"`
	Seq    uint64 `json:"seq"`
	// Request is the PUT that prepared it (options, expected VMM).
	Request api.PrepareRequest `json:"request"`
	// PeerUID and PeerPID are the VMM the socket admits.
	PeerUID int `json:"peer_uid"`
	PeerPID int `json:"peer_pid,omitempty"`
	// Prepared and AcceptBy bound the wait for the handshake.
	Prepared time.Time `json:"prepared"`
	AcceptBy time.Time `json:"accept_by"`
}

const (
	recordExt  = ".vm"
	removesExt = ".removes"
)

func (d *Daemon) recordPath(id string) string  { return filepath.Join(d.cfg.StateDir, id+recordExt) }
func (d *Daemon) removesPath(id string) string { return filepath.Join(d.cfg.StateDir, id+removesExt) }

// save writes a VM's record (atomically, not durably: a VM dies with its
// machine, so a machine crash has nothing to keep).
func (d *Daemon) save(r *vmRecord) error {
	if err := vmstate.Save(d.recordPath(r.ID), r); err != nil {
		return fmt.Errorf("recording VM %q: %w", r.ID, err)
	}
	return nil
}

// forget removes a VM's durable state: it exited, failed or was deleted.
func (d *Daemon) forget(id string) {
	for _, p := range []string{d.recordPath(id), d.removesPath(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing VM state", "vm", id, "file", p, "err", err)
		}
	}
}

// records lists the VM ids recorded in the state directory.
func (d *Daemon) records() ([]string, error) {
	ents, err := os.ReadDir(d.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		n := e.Name()
		if filepath.Ext(n) == recordExt && n[0] != '.' {
			ids = append(ids, n[:len(n)-len(recordExt)])
		}
	}
	return ids, nil
}
