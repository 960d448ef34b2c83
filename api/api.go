package api

import (
	"errors"
	"fmt"
	"time"
)

// Version is the API's path prefix.
const Version = "v1"

// VM states.
const (
	StateWaiting    = "waiting"    // socket listening, Firecracker not yet connected
	StateInstalling = "installing" // handshake done and recorded (a restarted daemon takes it back), hot set being installed
	StateReady      = "ready"      // hot set installed: resume the VM
	StateExited     = "exited"     // the VM went away after being served
	StateFailed     = "failed"     // see Error
)

// PrepareRequest is the body of PUT /v1/vms/{id}.
type PrepareRequest struct {
	// Snapshot is the published snapshot to restore.
	Snapshot string `json:"snapshot"`
	// EarlyResume reports the VM ready as soon as the long zero runs are
	// left to the kernel; the hot set then streams in while it runs.
	EarlyResume bool `json:"early_resume,omitempty"`
	// NoPreinstall serves hot pages on demand (an ablation).
	NoPreinstall bool `json:"no_preinstall,omitempty"`
	// NoPrefetch disables the background cold prefetcher (an ablation).
	NoPrefetch bool `json:"no_prefetch,omitempty"`
	// VMMUID is the uid of the VMM that will connect to the VM's socket
	// (Firecracker's uid under the jailer). Default: the daemon's
	// --vmm-uid, else the daemon's own uid. A peer of any other uid is
	// refused, root included unless this is 0.
	VMMUID *int `json:"vmm_uid,omitempty"`
	// VMMPID, if set, is the VMM's pid: any other process is refused, even
	// one of the same uid.
	VMMPID int `json:"vmm_pid,omitempty"`
}

// VM is one served VM.
type VM struct {
	ID       string `json:"id"`
	Snapshot string `json:"snapshot"`
	Socket   string `json:"uffd_socket"`
	// VMMUID and VMMPID are the peer the socket admits (pid 0: any
	// process of that uid).
	VMMUID int     `json:"vmm_uid"`
	VMMPID int     `json:"vmm_pid,omitempty"`
	State  string  `json:"state"`
	Error  string  `json:"error,omitempty"`
	Report *Report `json:"report,omitempty"`
	// ReadyNS is the time from handshake to ready, in nanoseconds.
	ReadyNS int64 `json:"ready_ns,omitempty"`
	// Adopted is set on a VM this daemon took over from a predecessor.
	Adopted *Adoption `json:"adopted,omitempty"`
}

// Adoption values of Adoption.From.
const (
	// AdoptedRestart: the predecessor died or stopped; this daemon took
	// the VM's userfaultfd back from its VMM.
	AdoptedRestart = "restart"
	// AdoptedHandoff: a running predecessor handed the VM over.
	AdoptedHandoff = "handoff"
)

// Adoption says how a daemon took a VM over.
type Adoption struct {
	From string `json:"from"`
	// At is when this daemon held the VM's userfaultfd.
	At time.Time `json:"at"`
	// PendingFaults is how many faults the predecessor had read and not
	// answered (vCPUs asleep on them) when this daemon took over; they
	// were woken and served again.
	PendingFaults uint64 `json:"pending_faults"`
	// QueuedFaults is how many faults were raised while no daemon read
	// them (in the userfaultfd's queue at the takeover).
	QueuedFaults uint64 `json:"queued_faults"`
	// FirstFault is when this daemon first served one of the VM's faults.
	FirstFault *time.Time `json:"first_fault,omitempty"`
	// StallNS runs from the start of the takeover (this daemon's start
	// after a restart; the handoff's start) to FirstFault: the part of
	// the VM's pause this daemon saw. After a crash, add the time the host
	// ran without a daemon.
	StallNS int64 `json:"stall_ns,omitempty"`
}

// Report describes one served restore (filled in when the VM exits).
type Report struct {
	HotSource          string `json:"hot_source"`
	ColdSource         string `json:"cold_source"`
	PreinstallNS       int64  `json:"preinstall_ns"`
	PreinstallPages    uint64 `json:"preinstall_pages"`
	PreinstallBytes    uint64 `json:"preinstall_bytes"`
	ZeroPagesToKernel  uint64 `json:"zero_pages_to_kernel"`
	ColdDemandExtents  uint64 `json:"cold_demand_extents"`
	ColdPrefetchExtent uint64 `json:"cold_prefetch_extents"`
	ColdBytesRead      uint64 `json:"cold_bytes_read"`
	ColdFaults         uint64 `json:"cold_faults"`
	HotFaults          uint64 `json:"hot_faults"`
	ZeroFaults         uint64 `json:"zero_faults"`
	ColdReadNS         int64  `json:"cold_read_ns"`
	// LearnedPages are the cold pages read because earlier restores of
	// the snapshot faulted on them (serve --learned-cold),
	// LearnedBeforeReady those installed before the VM was ready,
	// LearnedNew the cold pages this VM faulted on that were added to the
	// snapshot's history.
	LearnedPages       uint64       `json:"learned_pages"`
	LearnedBeforeReady uint64       `json:"learned_before_ready"`
	LearnedNew         uint64       `json:"learned_new"`
	Handler            HandlerStats `json:"handler"`
}

// HandlerStats are the fault loop's counters. (Their JSON names are those
// of v1's first release.)
type HandlerStats struct {
	Faults       uint64 `json:"Faults"`
	WriteFaults  uint64 `json:"WriteFaults"`
	ZeroFaults   uint64 `json:"ZeroFaults"`
	BytesCopied  uint64 `json:"BytesCopied"`
	Exists       uint64 `json:"Exists"`
	Retries      uint64 `json:"Retries"`
	Removes      uint64 `json:"Removes"`
	Unexpected   uint64 `json:"Unexpected"`
	Installed    uint64 `json:"Installed"`
	Unregistered uint64 `json:"Unregistered"`
	WallNS       int64  `json:"Wall"`
	Exit         string `json:"Exit"`
}

// PublishRequest is the body of POST /v1/snapshots. Image is a path on
// the daemon's host.
type PublishRequest struct {
	Image string `json:"image"`
	Name  string `json:"name"`
}

// Snapshot is a published snapshot.
type Snapshot struct {
	Name      string `json:"name"`
	MemBytes  uint64 `json:"mem_bytes"`
	Pages     uint64 `json:"pages"`
	ZeroPages uint64 `json:"zero_pages"`
	HotPages  uint64 `json:"hot_pages"`
	ColdPages uint64 `json:"cold_pages"`
	HotBytes  uint64 `json:"hot_bytes"`
	ColdBytes uint64 `json:"cold_bytes"`
	// HotTier is "cxl" when restores read the hot set from the pod's CXL
	// region, "rdma" when from its copy on the memory nodes, "local" for a
	// daemon serving image files.
	HotTier   string    `json:"hot_tier"`
	Published time.Time `json:"published"`
}

// Error codes.
const (
	CodeInvalid     = "invalid"     // 400
	CodeNotFound    = "not_found"   // 404
	CodeExists      = "exists"      // 409
	CodeUnavailable = "unavailable" // 503
	CodeTimeout     = "timeout"     // 504
	CodeInternal    = "internal"    // 500
)

// Error is every error response's body, and the error the client returns
// for one.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
	// Status is the HTTP status (not on the wire).
	Status int `json:"-"`
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
	}
	return e.Message
}

// Is makes errors.Is(err, api.ErrNotFound) and friends work on responses.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Message == "" && t.Code == e.Code
}

// Sentinels for errors.Is on client errors.
var (
	ErrInvalid     = &Error{Code: CodeInvalid}
	ErrNotFound    = &Error{Code: CodeNotFound}
	ErrExists      = &Error{Code: CodeExists}
	ErrUnavailable = &Error{Code: CodeUnavailable}
	ErrTimeout     = &Error{Code: CodeTimeout}
)

// StatusOf returns the HTTP status of an error code.
func StatusOf(code string) int {
	switch code {
	case CodeInvalid:
		return 400
	case CodeNotFound:
		return 404
	case CodeExists:
		return 409
	case CodeUnavailable:
		return 503
	case CodeTimeout:
		return 504
	}
	return 500
}
