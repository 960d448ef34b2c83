package corpus

import (
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/aquifer-pool/aquifer/wset"
)

// SynthParams are the parameters of one synthetic workload. Fractions are
// of the image's pages.
type SynthParams struct {
	MemSize uint64 `json:"mem_size"`
	// ZeroFrac of the pages are all zero.
	ZeroFrac float64 `json:"zero_frac"`
	// HotFrac of the pages are non-zero and touched by the recording.
	HotFrac float64 `json:"hot_frac"`
	// EvalKeep is the share of the hot set an evaluation touches again.
	EvalKeep float64 `json:"eval_keep"`
	// ColdFrac of the pages are non-zero, outside the hot set and touched
	// by an evaluation; TouchedZeroFrac are zero and touched.
	ColdFrac        float64 `json:"cold_frac"`
	TouchedZeroFrac float64 `json:"touched_zero_frac"`
	// WriteFrac of the touched non-zero pages are also written (touched
	// zero pages always are: they are fresh allocations).
	WriteFrac float64 `json:"write_frac"`
	// ExecFrac of the touched pages are first touched by an instruction fetch.
	ExecFrac float64 `json:"exec_frac"`
	// HandlerInsns is the instruction count an invocation spans and
	// NsPerInsn converts it to native time.
	HandlerInsns uint64  `json:"handler_insns"`
	NsPerInsn    float64 `json:"ns_per_insn"`
	// Source says where the numbers come from.
	Source string `json:"source"`
}

// DefaultSynthParams is the model used when no captured corpus exists:
// 82.8% zero and 5.5% hot pages as the paper reports over nine workloads
// (docs/corpus.md gives the sources of every number).
func DefaultSynthParams(memMiB int) SynthParams {
	return SynthParams{
		MemSize:         uint64(memMiB) << 20,
		ZeroFrac:        0.828,
		HotFrac:         0.055,
		EvalKeep:        0.97,
		ColdFrac:        0.002,
		TouchedZeroFrac: 0.002,
		WriteFrac:       0.45,
		ExecFrac:        0.15,
		HandlerInsns:    100_000_000,
		NsPerInsn:       0.15,
		Source:          "defaults: zero 82.8% and hot 5.5% from the paper (peers.md); keep/cold/write/exec fractions and ns/insn from captures on the project's machines (machine.md, docs/corpus.md)",
	}
}

// SynthParamsFrom derives parameters from a captured workload, so that the
// synthetic stand-in has the captured zero, hot, cold and write fractions.
func SynthParamsFrom(w *Workload) (SynthParams, error) {
	st, err := Characterize(w)
	if err != nil {
		return SynthParams{}, err
	}
	ev, err := w.LoadEval(0)
	if err != nil {
		return SynthParams{}, err
	}
	touched := pageKinds(ev)
	exec, written := 0, 0
	for _, k := range touched {
		if k&wset.Exec != 0 {
			exec++
		}
		if k&wset.Write != 0 {
			written++
		}
	}
	p := SynthParams{
		MemSize:         w.Meta.MemSize,
		ZeroFrac:        st.Zero / 100,
		HotFrac:         st.Hot / 100,
		EvalKeep:        st.EvalCoverage / 100,
		ColdFrac:        st.TouchedCold / 100,
		TouchedZeroFrac: st.TouchedZero / 100,
		NsPerInsn:       w.Meta.Calibration.NsPerInsn,
		Source:          fmt.Sprintf("calibrated from the %s workload %s (captured %s)", w.Kind, w.Dir, w.Meta.CapturedAt.Format(time.DateOnly)),
	}
	if len(touched) > 0 {
		p.ExecFrac = float64(exec) / float64(len(touched))
		p.WriteFrac = float64(written) / float64(len(touched))
	}
	if n := len(ev.Accesses); n > 0 {
		p.HandlerInsns = ev.Accesses[n-1].Insn
	}
	return p, nil
}

// SynthOptions configure Synth.
type SynthOptions struct {
	Functions []string
	MemMiB    int
	// Out is the corpus directory (default DefaultDir("synthetic")).
	Out string
	// From, when set, is a captured corpus to calibrate against.
	From string
	Seed uint64
}

// Synth writes a synthetic corpus: for every function a sparse memory
// image with the modelled zero/non-zero layout and record/eval traces with
// the modelled hot, cold and written sets. Every workload says it is
// synthetic and where its parameters came from.
func Synth(o SynthOptions) (*Corpus, error) {
	if o.Out == "" {
		o.Out = DefaultDir(KindSynthetic)
	}
	names := o.Functions
	if len(names) == 0 {
		names = Names()
	}
	var from *Corpus
	if o.From != "" {
		c, err := Open(o.From)
		if err != nil {
			return nil, err
		}
		from = c
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	for _, n := range names {
		f, err := Lookup(n)
		if err != nil {
			return nil, err
		}
		mem := f.MemMiB
		if o.MemMiB > 0 {
			mem = o.MemMiB
		}
		p := DefaultSynthParams(mem)
		if from != nil {
			if w, err := from.Get(n); err == nil {
				if p, err = SynthParamsFrom(w); err != nil {
					return nil, err
				}
			} else {
				slog.Warn("corpus: no captured workload to calibrate against; using defaults", "function", n)
			}
		}
		if err := synthOne(filepath.Join(o.Out, n), f, p, o.Seed); err != nil {
			return nil, fmt.Errorf("synth %s: %w", n, err)
		}
	}
	return Open(o.Out)
}

// synthOne writes one synthetic workload as steps: check the parameters,
// lay out zero and non-zero pages and choose the hot set, draw the traces,
// write the image, then the traces bound to it and meta.json into a staging
// directory, then move it into place. The generator's random draws happen
// in this order, so a seed always yields the same workload.
func synthOne(dir string, f Function, p SynthParams, seed uint64) error {
	if err := p.check(); err != nil {
		return err
	}
	g := newSynthGen(f, p, seed)
	staging, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(staging)
	evalInputs := []string{"b", "c"}
	traces := g.traces(evalInputs)
	if err := g.writeImage(staging); err != nil {
		return err
	}
	if err := writeTraces(staging, traces, filepath.Join(staging, MemFile)); err != nil {
		return err
	}
	pc := p
	meta := &Meta{Function: f.Name, Kind: KindSynthetic, MemSize: p.MemSize, CapturedAt: time.Now().UTC().Truncate(time.Second),
		RecordInput: "a", EvalInputs: evalInputs, Synthetic: &pc,
		Calibration: Calibration{NsPerInsn: p.NsPerInsn, Source: "synthetic model: " + p.Source}}
	if err := writeMeta(staging, meta); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return os.Rename(staging, dir)
}

// check validates the parameters.
func (p SynthParams) check() error {
	if p.MemSize == 0 || p.MemSize%pageSize != 0 {
		return fmt.Errorf("memory size %d is not a positive multiple of 4 KiB", p.MemSize)
	}
	for _, x := range []float64{p.ZeroFrac, p.HotFrac, p.EvalKeep, p.ColdFrac, p.TouchedZeroFrac, p.WriteFrac, p.ExecFrac} {
		if x < 0 || x > 1 {
			return fmt.Errorf("fraction %v out of [0,1]", x)
		}
	}
	if p.HotFrac+p.ColdFrac > 1-p.ZeroFrac || p.TouchedZeroFrac > p.ZeroFrac {
		return fmt.Errorf("hot+cold %.3f exceed the non-zero share %.3f", p.HotFrac+p.ColdFrac, 1-p.ZeroFrac)
	}
	return nil
}

// synthGen generates one workload from its parameters and a seeded RNG.
type synthGen struct {
	f      Function
	p      SynthParams
	rng    *rand.Rand
	n      int
	nz, zr []uint64 // non-zero and zero pages
	hot    []uint64
	hotSet map[uint64]bool
}

// newSynthGen lays out the memory (non-zero pages come in runs, as
// allocations do) and chooses the hot set among the non-zero pages.
func newSynthGen(f Function, p SynthParams, seed uint64) *synthGen {
	h := fnv.New64a()
	io.WriteString(h, f.Name)
	g := &synthGen{f: f, p: p, rng: rand.New(rand.NewPCG(seed, h.Sum64())), n: int(p.MemSize / pageSize)}
	nonzero := make([]bool, g.n)
	target := int(float64(g.n) * (1 - p.ZeroFrac))
	for cnt := 0; cnt < target; {
		start := g.rng.IntN(g.n)
		for l := 1 + g.rng.IntN(64); l > 0 && start < g.n && cnt < target; l, start = l-1, start+1 {
			if !nonzero[start] {
				nonzero[start] = true
				cnt++
			}
		}
	}
	for i, b := range nonzero {
		if b {
			g.nz = append(g.nz, uint64(i))
		} else {
			g.zr = append(g.zr, uint64(i))
		}
	}
	g.hot = g.pick(g.nz, int(float64(g.n)*p.HotFrac), nil)
	g.hotSet = map[uint64]bool{}
	for _, pg := range g.hot {
		g.hotSet[pg] = true
	}
	return g
}

// pick chooses k pages of from, clustered: runs of up to 16 consecutive
// candidates.
func (g *synthGen) pick(from []uint64, k int, exclude map[uint64]bool) []uint64 {
	out := make([]uint64, 0, k)
	seen := map[uint64]bool{}
	for tries := 0; len(out) < k && tries < 100*k+100; tries++ {
		i := g.rng.IntN(len(from))
		for l := 1 + g.rng.IntN(16); l > 0 && i < len(from) && len(out) < k; l, i = l-1, i+1 {
			if pg := from[i]; !seen[pg] && !exclude[pg] {
				seen[pg] = true
				out = append(out, pg)
			}
		}
	}
	return out
}

// order shuffles pages into a first-touch order: clusters of 8 stay
// together, clusters are shuffled.
func (g *synthGen) order(pages []uint64) []uint64 {
	g.rng.Shuffle(len(pages)/8, func(i, j int) {
		for k := 0; k < 8; k++ {
			pages[i*8+k], pages[j*8+k] = pages[j*8+k], pages[i*8+k]
		}
	})
	return pages
}

// trace turns pages (in touch order) into a trace: reads, instruction
// fetches and writes spread over the handler's instructions; zero pages
// touched are written.
func (g *synthGen) trace(pages []uint64, zeroTouched map[uint64]bool, what string) *wset.Trace {
	p := g.p
	t := &wset.Trace{PageSize: pageSize, MemSize: p.MemSize,
		Source: fmt.Sprintf("corpus synth: %s %s (%s; %s)", g.f.Name, what, KindSynthetic, p.Source)}
	if len(pages) == 0 {
		return t
	}
	step := p.HandlerInsns / uint64(len(pages)+1)
	var insn uint64
	for _, pg := range pages {
		insn += 1 + g.rng.Uint64N(2*step+1)
		k := wset.Read
		if g.rng.Float64() < p.ExecFrac && !zeroTouched[pg] {
			k = wset.Exec
		}
		if zeroTouched[pg] {
			k = wset.Write
		}
		t.Accesses = append(t.Accesses, wset.Access{Page: pg, Insn: insn, T: insnToDuration(insn, p.NsPerInsn), Kind: k})
		if k != wset.Write && g.rng.Float64() < p.WriteFrac {
			wi := insn + g.rng.Uint64N(step+1)
			t.Accesses = append(t.Accesses, wset.Access{Page: pg, Insn: wi, T: insnToDuration(wi, p.NsPerInsn), Kind: wset.Write})
		}
	}
	sort.SliceStable(t.Accesses, func(i, j int) bool { return t.Accesses[i].Insn < t.Accesses[j].Insn })
	return t
}

// touchedZero picks the zero pages an invocation touches.
func (g *synthGen) touchedZero() ([]uint64, map[uint64]bool) {
	pages := g.pick(g.zr, int(float64(g.n)*g.p.TouchedZeroFrac), nil)
	set := map[uint64]bool{}
	for _, pg := range pages {
		set[pg] = true
	}
	return pages, set
}

// traces draws the recording (the hot set plus touched zero pages) and one
// evaluation trace per input (most of the hot set, some cold and some zero
// pages), by file name.
func (g *synthGen) traces(evalInputs []string) []namedTrace {
	zp, recZero := g.touchedZero()
	recPages := append(append([]uint64(nil), g.hot...), zp...)
	out := []namedTrace{{RecordFile, g.trace(g.order(recPages), recZero, "record")}}
	for i, in := range evalInputs {
		var pages []uint64
		for _, pg := range g.hot {
			if g.rng.Float64() < g.p.EvalKeep {
				pages = append(pages, pg)
			}
		}
		pages = append(pages, g.pick(g.nz, int(float64(g.n)*g.p.ColdFrac), g.hotSet)...)
		zp, ez := g.touchedZero()
		pages = append(pages, zp...)
		out = append(out, namedTrace{EvalFile(i + 1), g.trace(g.order(pages), ez, "eval-"+in)})
	}
	return out
}

// namedTrace is a trace and the workload file it goes to.
type namedTrace struct {
	file  string
	trace *wset.Trace
}

// writeTraces binds the traces to the memory file mem (written already)
// and writes them into staging.
func writeTraces(staging string, traces []namedTrace, mem string) error {
	fp, err := wset.FingerprintFile(mem)
	if err != nil {
		return err
	}
	for _, t := range traces {
		if err := t.trace.Bind(fp); err != nil {
			return fmt.Errorf("%s: %w", t.file, err)
		}
		if err := wset.WriteFile(filepath.Join(staging, t.file), t.trace); err != nil {
			return err
		}
	}
	return nil
}

// writeImage writes the memory image: non-zero pages hold pseudo-random
// words in a random-length prefix (partly filled pages, like real heaps);
// zero pages are holes.
func (g *synthGen) writeImage(staging string) error {
	return writeAtomic(filepath.Join(staging, MemFile), func(w io.Writer) error {
		fw := w.(*os.File)
		buf := make([]byte, pageSize)
		for _, pg := range g.nz {
			clear(buf)
			fill := 8 + g.rng.IntN(pageSize-8)
			for i := 0; i+8 <= fill; i += 8 {
				v := g.rng.Uint64()
				for b := 0; b < 8; b++ {
					buf[i+b] = byte(v >> (8 * b))
				}
			}
			buf[0] |= 1 // never all zero
			if _, err := fw.WriteAt(buf, int64(pg)*pageSize); err != nil {
				return err
			}
		}
		return fw.Truncate(int64(g.p.MemSize))
	})
}
