package pagerd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/restore"
	"golang.org/x/sys/unix"
)

// vmmOf is the peer a VM's socket admits: the PUT's vmm_uid and vmm_pid,
// else the daemon's VMM uid.
func (d *Daemon) vmmOf(req api.PrepareRequest) (handshake.AcceptOptions, error) {
	o := handshake.AcceptOptions{UID: d.cfg.VMMUID, PID: req.VMMPID}
	if req.VMMUID != nil {
		if *req.VMMUID < 0 || *req.VMMUID >= 1<<32-1 {
			return o, fmt.Errorf("%w request: vmm_uid %d is not a uid", restore.ErrInvalid, *req.VMMUID)
		}
		o.UID = *req.VMMUID
	}
	if req.VMMPID < 0 {
		return o, fmt.Errorf("%w request: vmm_pid %d is not a pid", restore.ErrInvalid, req.VMMPID)
	}
	if req.VMMPID > 0 {
		if err := unix.Kill(req.VMMPID, 0); errors.Is(err, unix.ESRCH) {
			return o, fmt.Errorf("%w request: vmm_pid %d: no such process (start the VMM, then prepare its restore)", restore.ErrInvalid, req.VMMPID)
		}
	}
	if o.UID != os.Getuid() && o.UID != 0 && os.Geteuid() != 0 {
		return o, fmt.Errorf("%w request: vmm_uid %d: this daemon (uid %d) cannot give the VM's socket to another uid; run it as root",
			restore.ErrInvalid, o.UID, os.Getuid())
	}
	return o, nil
}

// checkSocketDir refuses a socket directory other users could write (they
// could replace a VM's socket) and warns when the VMM's uid cannot reach
// sockets in it.
func checkSocketDir(dir string, vmmUID int, log *slog.Logger) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	perm := st.Mode().Perm()
	if perm&0o022 != 0 {
		return fmt.Errorf("socket directory %s is writable by other users (mode %04o): run `chmod go-w %s`", dir, perm, dir)
	}
	if log == nil {
		log = slog.Default()
	}
	if vmmUID != os.Getuid() && perm&0o001 == 0 {
		log.Warn("the VMM's uid cannot reach sockets in the socket directory: link each VM's socket into its jail, or make the directory searchable (chmod 711)",
			"socket_dir", dir, "mode", fmt.Sprintf("%04o", perm), "vmm_uid", vmmUID)
	}
	return nil
}
