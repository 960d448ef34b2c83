package corpus

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/wset"
)

// Kinds of workload.
const (
	KindCaptured  = "captured"
	KindSynthetic = "synthetic"
)

// File names inside a workload directory (docs/corpus.md, "Layout").
const (
	MemFile    = "mem"
	RecordFile = "record.ws"
	MetaFile   = "meta.json"
	// Eval traces are eval-1.ws, eval-2.ws, ...; the repeat of eval-1's
	// input used for the consistency check is repeat-1.ws.
	RepeatFile = "repeat-1.ws"
	// StateFile is the device state saved at the snapshot point (QEMU
	// migration stream without RAM, x-ignore-shared): with MemFile it
	// restores the guest (format 2 on).
	StateFile = "vmstate"
)

// FormatVersion is the workload format this package writes. Version 1
// (meta.json without "format") had memory image and traces only; version 2
// adds the device state (StateFile), the expected output of every input
// (Meta.Outputs) and a virtio-balloon device in the guest. Open reads both;
// only version 2 workloads restore (Workload.Restorable), and a capture
// redoes version 1 workloads.
const FormatVersion = 2

// PostImageFile names the image kept after the invocation of trace file
// ws (Options.KeepPostImages; not part of a normal corpus).
func PostImageFile(ws string) string { return strings.TrimSuffix(ws, ".ws") + ".post.mem" }

// EvalFile names the i-th (1-based) evaluation trace.
func EvalFile(i int) string { return fmt.Sprintf("eval-%d.ws", i) }

// Meta is a workload's meta.json.
type Meta struct {
	// Format is the workload format version (0 in files written before
	// versions were recorded, which are version 1).
	Format   int    `json:"format,omitempty"`
	Function string `json:"function"`
	// Kind is "captured" (real guest under QEMU TCG) or "synthetic".
	Kind    string `json:"kind"`
	MemSize uint64 `json:"mem_size"`
	// Kernel is the Debian kernel package and version ("" for synthetic).
	Kernel     string    `json:"kernel,omitempty"`
	Cmdline    string    `json:"cmdline,omitempty"`
	QEMU       string    `json:"qemu,omitempty"`
	GuestKey   string    `json:"guest_key,omitempty"`
	CapturedAt time.Time `json:"captured_at"`
	// RecordInput built record.ws; EvalInputs built eval-N.ws in order.
	RecordInput string   `json:"record_input"`
	EvalInputs  []string `json:"eval_inputs"`
	// InitNs is the guest's init() time under TCG (untraced), for reference.
	InitNs      int64        `json:"guest_init_ns,omitempty"`
	Calibration Calibration  `json:"calibration"`
	Runs        []RunInfo    `json:"runs,omitempty"`
	Checks      *Checks      `json:"checks,omitempty"`
	Synthetic   *SynthParams `json:"synthetic,omitempty"`
	// State names the device-state file (format 2, captured only).
	State string `json:"state,omitempty"`
	// Outputs is the expected output of every captured input (format 2).
	Outputs map[string]Output `json:"outputs,omitempty"`
	// Packages are the Debian packages the function needs beyond python3.
	Packages []string `json:"packages,omitempty"`
	// FunctionFile names the module of a function brought by the operator,
	// kept in the workload directory (FunctionFile; "" for built-ins), and
	// Origin the path it was captured from.
	FunctionFile string `json:"function_file,omitempty"`
	Origin       string `json:"origin,omitempty"`
}

// Output is what the function returned for one input, in the guest and
// natively (the capture checks they agree).
type Output struct {
	// Digest is the runner's digest of repr(result) (corpus/guest/runner.py).
	Digest string `json:"digest"`
	// Text is ascii(result), truncated to 200 characters.
	Text string `json:"text,omitempty"`
}

// Calibration converts guest instructions to native time: T = Insn *
// NsPerInsn (docs/corpus.md, "Timing").
type Calibration struct {
	NsPerInsn float64 `json:"ns_per_insn"`
	// Source says how NsPerInsn was obtained.
	Source string `json:"source"`
	// NativeNs and GuestInsns are the measurement it came from (summed
	// over the calibration runs).
	NativeNs   int64  `json:"native_ns,omitempty"`
	GuestInsns uint64 `json:"guest_insns,omitempty"`
}

// RunInfo describes one traced invocation.
type RunInfo struct {
	File  string `json:"file"`
	Input string `json:"input"`
	// GuestNs is the handler's time inside the traced guest (TCG + plugin,
	// many times slower than native); NativeNs the same handler natively.
	GuestNs  int64 `json:"guest_handler_ns"`
	NativeNs int64 `json:"native_handler_ns"`
	// HandlerInsns is the guest instruction count of the handler (estimated
	// from the plugin's clock); WindowInsns the whole traced window.
	HandlerInsns uint64 `json:"handler_insns"`
	WindowInsns  uint64 `json:"window_insns"`
	// EndedByGuest says the window ended at the runner's end marker (the
	// invocation's output out), not when the host paused the vCPU.
	EndedByGuest bool `json:"ended_by_guest,omitempty"`
	Accesses     int  `json:"accesses"`
	Pages        int  `json:"pages"`
	WrittenPages int  `json:"written_pages"`
	// DeviceWrittenPages were written by the virtio-blk device (DMA), not
	// the vCPU: found by image diff, proven to be disk blocks, and added to
	// the trace as writes (see device.go).
	DeviceWrittenPages int `json:"device_written_pages"`
	// ChangedPages differ between the images before and after the
	// invocation; ChangedNotWritten of them are not written in the trace
	// and Unexplained neither vCPU- nor device-written (both must be 0).
	// ChangedAfterWindow (pages) were first written after the window's end by the
	// idle guest (interrupt handlers before the host paused it): changed,
	// but not by the invocation.
	ChangedPages       int      `json:"changed_pages"`
	ChangedNotWritten  int      `json:"changed_not_written"`
	ChangedAfterWindow []uint64 `json:"changed_after_window,omitempty"`
	Unexplained        int      `json:"unexplained_pages"`
	Digest             string   `json:"digest"`
}

// Checks are the capture's self-checks (issue 7 acceptance).
type Checks struct {
	// RepeatJaccard is the page-set overlap of eval-1 and its repeat.
	RepeatJaccard float64 `json:"repeat_jaccard"`
	// AllChangedWritten is true when every changed page of every run was
	// recorded as written.
	AllChangedWritten bool `json:"all_changed_written"`
}

// Workload is one function's entry in a corpus.
type Workload struct {
	Name   string
	Dir    string
	Kind   string
	Meta   Meta
	Mem    string   // memory image path
	Record string   // record.ws path
	Eval   []string // eval-N.ws paths, in order
	// State is the device-state path ("" before format 2).
	State string
}

// Restorable reports whether the workload can be restored into a VM (a
// captured format-2 workload with its device state), and if not, why.
func (w *Workload) Restorable() error {
	if w.Kind != KindCaptured {
		return fmt.Errorf("%s is %s: only captured workloads restore into a real guest", w.Name, w.Kind)
	}
	if w.Meta.Format < 2 || w.State == "" {
		return fmt.Errorf("%s in %s has format %d, without device state: recapture it (aquifer corpus capture --functions %s --force)",
			w.Name, w.Dir, max(w.Meta.Format, 1), w.Name)
	}
	return nil
}

// Expected returns the expected output of input, if the capture ran it.
func (w *Workload) Expected(input string) (Output, bool) {
	o, ok := w.Meta.Outputs[input]
	return o, ok
}

// LoadRecord reads the recording trace.
func (w *Workload) LoadRecord() (*wset.Trace, error) { return wset.ReadFile(w.Record) }

// LoadEval reads the i-th (0-based) evaluation trace.
func (w *Workload) LoadEval(i int) (*wset.Trace, error) {
	if i < 0 || i >= len(w.Eval) {
		return nil, fmt.Errorf("%s has %d eval traces, not %d", w.Name, len(w.Eval), i+1)
	}
	return wset.ReadFile(w.Eval[i])
}

// Corpus is a directory of workloads.
type Corpus struct {
	Dir       string
	Workloads []*Workload
}

// Kind returns "captured", "synthetic" or "mixed".
func (c *Corpus) Kind() string {
	k := ""
	for _, w := range c.Workloads {
		if k == "" {
			k = w.Kind
		} else if k != w.Kind {
			return "mixed"
		}
	}
	return k
}

// Get returns the named workload.
func (c *Corpus) Get(name string) (*Workload, error) {
	for _, w := range c.Workloads {
		if w.Name == name {
			return w, nil
		}
	}
	return nil, fmt.Errorf("%s has no workload %q", c.Dir, name)
}

// ErrNoWorkloads is Open's error for a directory without workloads.
var ErrNoWorkloads = errors.New("holds no workloads")

// DefaultDir is where capture and synth write unless told otherwise.
func DefaultDir(kind string) string { return filepath.Join(CacheDir(), "corpus", kind) }

// OpenDefault opens the cached captured corpus, else the cached synthetic
// one; callers must report Kind() with any number they derive.
func OpenDefault() (*Corpus, error) {
	c, err := Open(DefaultDir(KindCaptured))
	if err == nil {
		return c, nil
	}
	if s, err2 := Open(DefaultDir(KindSynthetic)); err2 == nil {
		return s, nil
	}
	return nil, fmt.Errorf("no corpus in %s or %s: run `aquifer corpus capture` (real guests, needs QEMU) or `aquifer corpus synth`",
		DefaultDir(KindCaptured), DefaultDir(KindSynthetic))
}

// Open reads a corpus directory: every subdirectory with a meta.json is a
// workload; the files it names must exist.
func Open(dir string) (*Corpus, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	c := &Corpus{Dir: dir}
	for _, e := range ents {
		if !e.IsDir() || e.Name()[0] == '.' {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), MetaFile)); errors.Is(err, os.ErrNotExist) {
			continue // not a workload directory
		}
		w, err := OpenWorkload(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		c.Workloads = append(c.Workloads, w)
	}
	if len(c.Workloads) == 0 {
		return nil, fmt.Errorf("%s %w (run `aquifer corpus capture` or `aquifer corpus synth`)", dir, ErrNoWorkloads)
	}
	sort.Slice(c.Workloads, func(i, j int) bool { return order(c.Workloads[i].Name) < order(c.Workloads[j].Name) })
	return c, nil
}

func order(name string) string {
	for i, f := range Functions {
		if f.Name == name {
			return fmt.Sprintf("%03d", i)
		}
	}
	return "999" + name
}

// OpenWorkload reads one workload directory.
func OpenWorkload(dir string) (*Workload, error) {
	b, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if err != nil {
		return nil, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, MetaFile), err)
	}
	if m.Kind != KindCaptured && m.Kind != KindSynthetic {
		return nil, fmt.Errorf("%s: unknown kind %q", dir, m.Kind)
	}
	w := &Workload{Name: m.Function, Dir: dir, Kind: m.Kind, Meta: m,
		Mem: filepath.Join(dir, MemFile), Record: filepath.Join(dir, RecordFile)}
	for i := range m.EvalInputs {
		w.Eval = append(w.Eval, filepath.Join(dir, EvalFile(i+1)))
	}
	need := append([]string{w.Mem, w.Record}, w.Eval...)
	if m.State != "" {
		if m.State != filepath.Base(m.State) {
			return nil, fmt.Errorf("%s: state %q must be a file name in the workload directory", dir, m.State)
		}
		w.State = filepath.Join(dir, m.State)
		need = append(need, w.State)
	}
	if m.FunctionFile != "" {
		if m.FunctionFile != filepath.Base(m.FunctionFile) {
			return nil, fmt.Errorf("%s: function_file %q must be a file name in the workload directory", dir, m.FunctionFile)
		}
		need = append(need, filepath.Join(dir, m.FunctionFile))
	}
	if m.Format > FormatVersion {
		return nil, fmt.Errorf("%s has format %d; this aquifer reads up to %d (upgrade aquifer)", dir, m.Format, FormatVersion)
	}
	for _, p := range need {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("workload %s is incomplete: %w", dir, err)
		}
		if p == w.Mem && uint64(st.Size()) != m.MemSize {
			return nil, fmt.Errorf("%s is %d bytes, meta.json says %d", p, st.Size(), m.MemSize)
		}
	}
	return w, nil
}

func writeMeta(dir string, m *Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, MetaFile), append(b, '\n'))
}
