package corpus

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aquifer-pool/aquifer/wset"
)

// BuildPlugin compiles the aqtrace TCG plugin with gcc into the cache (once
// per source version) and returns the path of the shared object.
func BuildPlugin(ctx context.Context, cache string) (string, error) {
	return buildSO(ctx, cache, "plugin", "aqtrace", []string{"plugin/aqtrace.c", "plugin/qemu_plugin_api.h"}, "-lpthread")
}

// BuildShim compiles the aqshim LD_PRELOAD shim (corpus/shim/aqshim.c: QEMU
// as a stand-in for Firecracker's memory backends) into the cache and
// returns the path of the shared object.
func BuildShim(ctx context.Context, cache string) (string, error) {
	return buildSO(ctx, cache, "shim", "aqshim", []string{"shim/aqshim.c"})
}

// buildSO compiles the embedded sources (the first is the C file) into
// CACHE/<kind>-<hash>/<name>.so, once per source version.
func buildSO(ctx context.Context, cache, kind, name string, sources []string, libs ...string) (string, error) {
	h := sha256.New()
	var data [][]byte
	for _, p := range sources {
		b, err := assets.ReadFile(p)
		if err != nil {
			return "", err
		}
		h.Write(b)
		data = append(data, b)
	}
	unlock, err := lockCache(cache)
	if err != nil {
		return "", err
	}
	defer unlock()
	dir := filepath.Join(cache, kind+"-"+hex.EncodeToString(h.Sum(nil))[:12])
	so := filepath.Join(dir, name+".so")
	if _, err := os.Stat(so); err == nil {
		return so, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for i, p := range sources {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), data[i], 0o644); err != nil {
			return "", err
		}
	}
	tmp := so + ".tmp"
	args := append([]string{"-O2", "-Wall", "-shared", "-fPIC", "-fvisibility=hidden", "-o", tmp, filepath.Base(sources[0])}, libs...)
	if _, err := run(ctx, dir, "gcc", args...); err != nil {
		return "", fmt.Errorf("building %s: %w", name, err)
	}
	return so, os.Rename(tmp, so)
}

// RawTrace is the aqtrace plugin's log: first touches with instruction
// counts and host monotonic timestamps.
type RawTrace struct {
	Pages              uint64
	ArmedInsn, ArmedNs uint64
	StopInsn, StopNs   uint64
	Dropped            int
	// Accesses are the first touches inside the window.
	Accesses []RawAccess
	// Marked says the guest ended the window itself (the runner's marker
	// store, at MarkInsn/MarkNs); After are the first touches from then
	// until the host paused the vCPU: the idle guest's, outside the window.
	Marked           bool
	MarkInsn, MarkNs uint64
	After            []RawAccess
}

// End is the window's end: the guest's marker, else the host's stop.
func (r *RawTrace) End() (insn, ns uint64) {
	if r.Marked {
		return r.MarkInsn, r.MarkNs
	}
	return r.StopInsn, r.StopNs
}

// RawAccess is one first touch in the plugin log.
type RawAccess struct {
	Kind     wset.Kind
	Page     uint64
	Insn, Ns uint64
}

// ParseRawTrace reads the plugin's text log (format in
// corpus/plugin/aqtrace.c). It rejects anything malformed with the line
// number; it never panics on input.
func ParseRawTrace(r io.Reader) (*RawTrace, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<16)
	t := &RawTrace{}
	n := 0
	sawHeader, sawArmed, sawStop := false, false, false
	nums := func(f []string, want int) ([]uint64, error) {
		if len(f) != want+1 {
			return nil, fmt.Errorf("want %d fields, have %d", want+1, len(f))
		}
		out := make([]uint64, want)
		for i := range out {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	for sc.Scan() {
		n++
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if !sawHeader {
			if len(f) != 2 || f[0] != "aqtrace" || f[1] != "1" {
				return nil, fmt.Errorf("plugin log line %d: not an aqtrace v1 log", n)
			}
			sawHeader = true
			continue
		}
		if sawStop {
			return nil, fmt.Errorf("plugin log line %d: data after stop", n)
		}
		var err error
		var v []uint64
		switch f[0] {
		case "pages":
			if v, err = nums(f, 1); err == nil {
				t.Pages = v[0]
			}
		case "armed":
			if v, err = nums(f, 2); err == nil {
				t.ArmedInsn, t.ArmedNs = v[0], v[1]
				sawArmed = true
			}
		case "mark":
			switch {
			case !sawArmed:
				err = errors.New("mark before armed")
			case t.Marked:
				err = errors.New("a second mark")
			default:
				if v, err = nums(f, 2); err == nil {
					if v[0] < t.ArmedInsn {
						err = fmt.Errorf("mark at instruction %d before arming at %d", v[0], t.ArmedInsn)
					} else {
						t.Marked, t.MarkInsn, t.MarkNs = true, v[0], v[1]
					}
				}
			}
		case "stop":
			if v, err = nums(f, 2); err == nil {
				t.StopInsn, t.StopNs = v[0], v[1]
				sawStop = true
			}
		case "dropped":
			if v, err = nums(f, 1); err == nil {
				t.Dropped = int(min(v[0], 1<<30))
			}
		case "r", "w", "x":
			if !sawArmed {
				return nil, fmt.Errorf("plugin log line %d: access before armed", n)
			}
			if v, err = nums(f, 3); err == nil {
				k := map[string]wset.Kind{"r": wset.Read, "w": wset.Write, "x": wset.Exec}[f[0]]
				if t.Pages != 0 && v[0] >= t.Pages {
					err = fmt.Errorf("page %d beyond %d pages", v[0], t.Pages)
				} else if v[1] < t.ArmedInsn {
					err = fmt.Errorf("instruction count %d before arming at %d", v[1], t.ArmedInsn)
				} else if a := (RawAccess{Kind: k, Page: v[0], Insn: v[1], Ns: v[2]}); t.Marked {
					t.After = append(t.After, a)
				} else {
					t.Accesses = append(t.Accesses, a)
				}
			}
		default:
			err = fmt.Errorf("unknown record %q", f[0])
		}
		if err != nil {
			return nil, fmt.Errorf("plugin log line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("plugin log: %w", err)
	}
	if !sawHeader || !sawArmed || !sawStop {
		return nil, fmt.Errorf("plugin log is incomplete (header %v, armed %v, stop %v)", sawHeader, sawArmed, sawStop)
	}
	if t.StopInsn < t.ArmedInsn {
		return nil, fmt.Errorf("plugin log: stop instruction count %d before arming at %d", t.StopInsn, t.ArmedInsn)
	}
	if t.Marked && t.MarkInsn > t.StopInsn {
		return nil, fmt.Errorf("plugin log: mark at instruction %d after the stop at %d", t.MarkInsn, t.StopInsn)
	}
	return t, nil
}

// ToTrace converts the plugin log to the working-set format. Page numbers
// are RAM-file page indices already; Insn is counted from arming; T is the
// calibrated native time nsPerInsn * Insn (docs/corpus.md, "Timing"). The
// first read, write and execute of a page are separate accesses.
func (r *RawTrace) ToTrace(memSize uint64, nsPerInsn float64, source string) *wset.Trace {
	t := &wset.Trace{PageSize: 4096, MemSize: memSize, Source: source, Accesses: make([]wset.Access, 0, len(r.Accesses))}
	var lastInsn uint64
	for _, a := range r.Accesses {
		insn := a.Insn - r.ArmedInsn
		if insn < lastInsn { // single vCPU: never, but keep T monotonic
			insn = lastInsn
		}
		lastInsn = insn
		t.Accesses = append(t.Accesses, wset.Access{
			Page: a.Page,
			Insn: insn,
			T:    insnToDuration(insn, nsPerInsn),
			Kind: a.Kind,
		})
	}
	return t
}

// insnAt estimates the instruction count at host monotonic time ns by
// interpolating between logged first touches.
func (r *RawTrace) insnAt(ns uint64) uint64 {
	prevNs, prevInsn := r.ArmedNs, r.ArmedInsn
	for _, a := range r.Accesses {
		if a.Ns >= ns {
			if a.Ns == prevNs {
				return a.Insn
			}
			frac := float64(ns-prevNs) / float64(a.Ns-prevNs)
			return prevInsn + uint64(frac*float64(a.Insn-prevInsn))
		}
		prevNs, prevInsn = a.Ns, a.Insn
	}
	endInsn, endNs := r.End()
	if endNs > prevNs && ns < endNs {
		frac := float64(ns-prevNs) / float64(endNs-prevNs)
		return prevInsn + uint64(frac*float64(endInsn-prevInsn))
	}
	return endInsn
}
