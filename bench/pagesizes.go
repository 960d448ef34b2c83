package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/hugetlb"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/wset"
)

// Guest page sizes side by side (`aquifer bench --page-sizes 4KiB,2MiB`):
// every strategy that can restore a guest of each page size runs on the
// same corpus at each of them, interleaved round by round as the main
// benchmark interleaves strategies. A 2 MiB guest is what Firecracker makes
// of huge_pages "2M": hugetlbfs-backed memory, restorable only through
// UFFD. The corpus' 4 KiB traces replay on it at 4 KiB precision; its
// images, REAP working sets and hot sets are made from the same 4 KiB
// recording, coarsened to 2 MiB pages.

// coarsened is rec in pages of ps bytes (Options.GuestPageSize: rec itself
// for 0 or rec's own page size).
func coarsened(rec *wset.Trace, ps uint32) (*wset.Trace, error) {
	if ps == 0 || ps == rec.PageSize {
		return rec, nil
	}
	return rec.Coarsen(ps)
}

// PageSizeSample is one VM restored at one guest page size.
type PageSizeSample struct {
	Sample
	// PageSize is the guest's page size.
	PageSize uint32 `json:"page_size"`
	// BytesCopied is what the serving side copied into guest memory
	// (faults and installs ahead of them; 0 for strategies without one).
	BytesCopied uint64 `json:"bytes_copied"`
	// Preinstalled is the pages installed before the first fault or resume
	// (REAP's working set, Aquifer's hot set).
	Preinstalled uint64 `json:"preinstalled_pages,omitempty"`
	// HotSource is where an Aquifer strategy's hot set came from ("cxl",
	// or the RDMA copy when the CXL tier was out of service).
	HotSource string `json:"hot_source,omitempty"`
}

// PageSizeSupport says whether strategy s can restore guests of page size
// ps and, if not, why.
func PageSizeSupport(s string, ps uint32) (bool, string) {
	if ps == 4096 {
		return true, ""
	}
	switch s {
	case Firecracker:
		return false, `Firecracker's File backend refuses huge_pages "2M" snapshots (UFFD only)`
	case FaaSnap:
		return false, "FaaSnap maps the memory file over guest memory: no hugetlbfs"
	}
	return true, ""
}

// psPrepared is a workload's derived files for one page size.
type psPrepared struct {
	w      *corpus.Workload
	ps     uint32
	reapWS string
	plan   string            // FaaSnap's mapping plan (4 KiB only)
	snap   map[string]string // aquifer strategy → pod snapshot
}

// RunPageSizes runs every strategy of o that supports each page size in
// sizes, side by side: per workload, per round, every (strategy, page size)
// pair once in a rotating order. With newPod, each workload is published
// into a pod of its own, closed when the workload is done: memory nodes
// keep every segment published to them (there is no garbage collection
// yet), and a workload's images at two page sizes and three hot-set
// choices, replicated, are a GiB or more.
func RunPageSizes(ctx context.Context, o Options, sizes []uint32, newPod func(context.Context) (Pod, error)) ([]PageSizeSample, error) {
	if err := CheckStrategies(o.Strategies); err != nil {
		return nil, err
	}
	if o.Runs <= 0 {
		o.Runs = 3
	}
	if o.VCPUs <= 0 {
		o.VCPUs = 2
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	for _, ps := range sizes {
		if ps != 4096 && ps != hugetlb.PageSize {
			return nil, fmt.Errorf("page size %d: want 4 KiB or 2 MiB", ps)
		}
	}
	type pair struct {
		s  string
		ps uint32
	}
	var pairs []pair
	for _, s := range o.Strategies {
		for _, ps := range sizes {
			if ok, why := PageSizeSupport(s, ps); ok {
				pairs = append(pairs, pair{s, ps})
			} else {
				fmt.Fprintf(o.Log, "bench: %s at %d-byte pages: unsupported: %s\n", s, ps, why)
			}
		}
	}
	var wls []*corpus.Workload
	hugeNeed := 0
	for _, w := range o.Corpus.Workloads {
		if len(o.Workloads) > 0 && !contains(o.Workloads, w.Name) {
			continue
		}
		wls = append(wls, w)
		if slices.Contains(sizes, hugetlb.PageSize) {
			st, err := os.Stat(w.Mem)
			if err != nil {
				return nil, err
			}
			hugeNeed = max(hugeNeed, int(st.Size()/hugetlb.PageSize))
		}
	}
	if len(wls) == 0 {
		return nil, fmt.Errorf("no workload of %v in the corpus at %s", o.Workloads, o.Corpus.Dir)
	}
	if hugeNeed > 0 {
		// A 2 MiB guest may hold every page of its memory (cxl-only
		// installs every non-zero one): the pool must cover the largest
		// guest at the highest concurrency.
		if err := hugetlb.Check(hugeNeed * slices.Max(o.Concurrency)); err != nil {
			return nil, fmt.Errorf("2 MiB guests: %w", err)
		}
	}
	var out []PageSizeSample
	for _, w := range wls {
		got, err := runPageSizeWorkload(ctx, o, w, sizes, len(pairs), func(k int) (string, uint32) { return pairs[k].s, pairs[k].ps }, newPod)
		out = append(out, got...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// runPageSizeWorkload prepares one workload at every page size (in a pod
// of its own when newPod is set) and runs its rounds.
func runPageSizeWorkload(ctx context.Context, o Options, w *corpus.Workload, sizes []uint32, npairs int, pair func(int) (string, uint32),
	newPod func(context.Context) (Pod, error)) ([]PageSizeSample, error) {
	if newPod != nil {
		pod, err := newPod(ctx)
		if err != nil {
			return nil, err
		}
		defer pod.Close()
		o.Pod = pod
	}
	var row []*psPrepared
	for _, ps := range sizes {
		fmt.Fprintf(o.Log, "bench: preparing %s at %d-byte pages\n", w.Name, ps)
		p, err := preparePageSize(ctx, o, w, ps)
		if err != nil {
			return nil, fmt.Errorf("preparing %s at %d-byte pages: %w", w.Name, ps, err)
		}
		row = append(row, p)
	}
	var out []PageSizeSample
	for _, c := range o.Concurrency {
		for round := 0; round < o.Runs; round++ {
			for k := 0; k < npairs; k++ {
				s, ps := pair((k + round) % npairs)
				p := row[slices.Index(sizes, ps)]
				got, err := runPageSizeBatch(ctx, o, p, s, c, round)
				if err != nil {
					return out, fmt.Errorf("%s at %d-byte pages on %s at concurrency %d: %w", s, ps, w.Name, c, err)
				}
				out = append(out, got...)
			}
		}
	}
	return out, nil
}

// preparePageSize makes a workload's images (published to the pod) and
// REAP working set at one page size, from its 4 KiB recording.
func preparePageSize(ctx context.Context, o Options, w *corpus.Workload, ps uint32) (*psPrepared, error) {
	if len(w.Eval) == 0 {
		return nil, fmt.Errorf("workload %s has no evaluation trace", w.Name)
	}
	dir := filepath.Join(o.WorkDir, w.Name, "ps"+strconv.Itoa(int(ps)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	rec, err := w.LoadRecord()
	if err != nil {
		return nil, err
	}
	p := &psPrepared{w: w, ps: ps, snap: map[string]string{}}
	if contains(o.Strategies, REAP) {
		r := rec
		if ps != rec.PageSize {
			if r, err = rec.Coarsen(ps); err != nil {
				return nil, err
			}
		}
		p.reapWS = filepath.Join(dir, "reap.ws")
		if err := baseline.BuildREAP(w.Mem, r, p.reapWS); err != nil {
			return nil, err
		}
	}
	if ok, _ := PageSizeSupport(FaaSnap, ps); ok && contains(o.Strategies, FaaSnap) {
		fd := filepath.Join(dir, "faasnap")
		if err := os.MkdirAll(fd, 0o755); err != nil {
			return nil, err
		}
		if p.plan, err = baseline.BuildFaaSnap(w.Mem, rec, fd); err != nil {
			return nil, err
		}
	}
	images := map[string]string{}
	convert := func(s string, opt snapimage.ConvertOptions) error {
		if !contains(o.Strategies, s) {
			return nil
		}
		if o.Pod == nil {
			return fmt.Errorf("no pod for %s", s)
		}
		img := filepath.Join(dir, s+".img")
		opt.PageSize = ps
		if _, err := snapimage.Convert(w.Mem, img, opt); err != nil {
			return err
		}
		images[s] = img
		p.snap[s] = fmt.Sprintf("%s-%s-ps%d", w.Name, s, ps)
		return o.Pod.Publish(ctx, img, p.snap[s])
	}
	if err := convert(Aquifer, snapimage.ConvertOptions{Trace: rec}); err != nil {
		return nil, err
	}
	if contains(o.Strategies, AquiferEarly) {
		if _, ok := images[Aquifer]; ok {
			p.snap[AquiferEarly] = p.snap[Aquifer]
		} else if err := convert(AquiferEarly, snapimage.ConvertOptions{Trace: rec}); err != nil {
			return nil, err
		}
	}
	if contains(o.Strategies, AquiferCXLOnly) {
		all, err := allNonZero(w.Mem, rec)
		if err != nil {
			return nil, err
		}
		if err := convert(AquiferCXLOnly, snapimage.ConvertOptions{Trace: all}); err != nil {
			return nil, err
		}
	}
	if err := convert(AquiferRDMAOnly, snapimage.ConvertOptions{}); err != nil {
		return nil, err
	}
	return p, nil
}

// runPageSizeBatch restores c VMs of one workload with one strategy at one
// page size at once.
func runPageSizeBatch(ctx context.Context, o Options, p *psPrepared, s string, c, round int) ([]PageSizeSample, error) {
	eval := p.w.Eval[round%len(p.w.Eval)]
	dir, err := os.MkdirTemp(o.WorkDir, "p")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	switch s {
	case Firecracker, FirecrackerUffd, REAP, FaaSnap:
		dropCache(p.w.Mem, p.reapWS)
		if p.plan != "" {
			dropCache(filepath.Join(filepath.Dir(p.plan), "loading-set"))
		}
	}
	out := make([]PageSizeSample, c)
	errs := make([]error, c)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("%s-%s-ps%d-c%d-r%d-%d", p.w.Name, s, p.ps, c, round, i)
			out[i], errs[i] = runPageSizeVM(ctx, o, p, s, eval, dir, i, id)
			out[i].Strategy, out[i].Workload, out[i].Concurrency, out[i].Round, out[i].VM, out[i].PageSize = s, p.w.Name, c, round, i, p.ps
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

var (
	copiedRE    = regexp.MustCompile(`bytes copied (\d+)`)
	installedRE = regexp.MustCompile(`pre-installed (\d+) pages`)
)

// runPageSizeVM restores one VM as the main benchmark does (a separate
// `aquifer guest run`, serving processes of its own or the pod's daemon),
// at the prepared page size, and counts faults and bytes copied.
func runPageSizeVM(ctx context.Context, o Options, p *psPrepared, s, eval, dir string, n int, id string) (PageSizeSample, error) {
	args := []string{"guest", "run", "--json", "--mem", p.w.Mem, "--trace", eval, "--vcpus", strconv.Itoa(o.VCPUs),
		"--think-scale", "1", "--log-level", "warn", "--page-size", strconv.Itoa(int(p.ps))}
	var server *exec.Cmd
	var serverOut bytes.Buffer
	switch s {
	case Firecracker:
		args = append(args, "--backend", "file")
	case Warm:
		args = append(args, "--backend", "warm")
	case NoRestore:
		args = append(args, "--backend", "warm", "--no-faults")
	case FaaSnap:
		args = append(args, "--backend", "faasnap", "--faasnap-plan", p.plan)
	case FirecrackerUffd, REAP:
		sock := filepath.Join(dir, fmt.Sprintf("v%d.sock", n))
		sargs := []string{"handle", "--socket", sock, "--mem", p.w.Mem, "--log-level", "warn"}
		sargs = append(sargs, niceArgs(o.ServerNice)...)
		if s == REAP {
			sargs = append(sargs, "--reap-ws", p.reapWS)
		}
		server = exec.CommandContext(ctx, o.Bin, sargs...)
		server.Stdout, server.Stderr = &serverOut, os.Stderr
		if err := server.Start(); err != nil {
			return PageSizeSample{}, err
		}
		defer server.Process.Kill()
		if err := waitSocket(ctx, sock); err != nil {
			return PageSizeSample{}, err
		}
		args = append(args, "--backend", "uffd", "--socket", sock)
	case Aquifer, AquiferEarly, AquiferCXLOnly, AquiferRDMAOnly:
		args = append(args, "--backend", "uffd", "--pager-api", o.Pod.API(), "--vm", id, "--snapshot", p.snap[s])
		if s == AquiferEarly {
			args = append(args, "--early-resume")
		}
	default:
		return PageSizeSample{}, fmt.Errorf("strategy %s has no page-size form", s)
	}
	cmd := exec.CommandContext(ctx, o.Bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return PageSizeSample{}, fmt.Errorf("guest %s: %v: %s", id, err, lastLines(stderr.String()))
	}
	var rep guest.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return PageSizeSample{}, fmt.Errorf("guest %s report: %v", id, err)
	}
	if rep.Mismatches != 0 {
		return PageSizeSample{}, fmt.Errorf("guest %s: %d mismatching pages: %s", id, rep.Mismatches, rep.FirstError)
	}
	if server != nil {
		server.Wait() // it has printed its summary: the VM is gone
	}
	setup, err := accountSetup(&rep, s, serverOut.String())
	if err != nil {
		return PageSizeSample{}, fmt.Errorf("guest %s: %v", id, err)
	}
	smp := PageSizeSample{Sample: Sample{Restore: rep.Restore, FirstTouch: rep.FirstTouch, EndToEnd: rep.EndToEnd, Verified: rep.Verified, Setup: setup}}
	num := func(re *regexp.Regexp, s string) uint64 {
		if m := re.FindStringSubmatch(s); m != nil {
			v, _ := strconv.ParseUint(m[1], 10, 64)
			return v
		}
		return 0
	}
	switch {
	case server != nil:
		smp.Faults = num(faultsRE, serverOut.String())
		smp.BytesCopied = num(copiedRE, serverOut.String())
		smp.Preinstalled = num(installedRE, serverOut.String())
	case p.snap[s] != "":
		v, err := exitedVM(ctx, o.Pod.API(), id)
		if err != nil {
			return smp, err
		}
		r := v.Report
		smp.Faults, smp.BytesCopied, smp.Preinstalled, smp.HotSource = r.Handler.Faults, r.Handler.BytesCopied, r.PreinstallPages, r.HotSource
		smp.Preinstall = time.Duration(r.PreinstallNS)
	}
	return smp, nil
}

// exitedVM waits for the daemon to record the report of VM id.
func exitedVM(ctx context.Context, sock, id string) (*api.VM, error) {
	pc := client.New(sock, client.Options{})
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := pc.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		switch {
		case v.State == api.StateExited && v.Report != nil:
			return v, nil
		case v.State == api.StateFailed:
			return nil, fmt.Errorf("vm %s failed: %s", id, v.Error)
		case time.Now().After(deadline):
			return nil, fmt.Errorf("vm %s: no report after 30s (state %s)", id, v.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// PageSizeRow is one (strategy, concurrency, page size) of the table, over
// every workload and round.
type PageSizeRow struct {
	Strategy    string  `json:"strategy"`
	Concurrency int     `json:"concurrency"`
	PageSize    uint32  `json:"page_size"`
	Samples     int     `json:"samples"`
	P50         int64   `json:"end_to_end_p50_ns"`
	Faults      float64 `json:"faults_mean"`
	MiBCopied   float64 `json:"mib_copied_mean"`
	// HotFromCXL counts the samples whose hot set came from the CXL tier
	// (Aquifer strategies with a hot set; the rest read its RDMA copy).
	HotFromCXL int `json:"hot_from_cxl,omitempty"`
	// Ratio is the geometric mean over workloads of the median end-to-end
	// time at this page size over that at the first one (4 KiB).
	Ratio float64 `json:"ratio_to_first_page_size"`
}

// PageSizeTable aggregates page-size samples; the first of sizes is the
// reference of the ratios.
func PageSizeTable(samples []PageSizeSample, strategies []string, conc []int, sizes []uint32) []PageSizeRow {
	med := func(x []int64) int64 {
		s := slices.Clone(x)
		slices.Sort(s)
		return s[(len(s)-1)/2]
	}
	type key struct {
		s  string
		c  int
		ps uint32
	}
	groups := map[key][]PageSizeSample{}
	for _, x := range samples {
		k := key{x.Strategy, x.Concurrency, x.PageSize}
		groups[k] = append(groups[k], x)
	}
	// perWorkload is the median end-to-end time of each workload in g.
	perWorkload := func(g []PageSizeSample) map[string]int64 {
		by := map[string][]int64{}
		for _, x := range g {
			by[x.Workload] = append(by[x.Workload], int64(x.EndToEnd))
		}
		out := map[string]int64{}
		for w, v := range by {
			out[w] = med(v)
		}
		return out
	}
	var rows []PageSizeRow
	for _, s := range strategies {
		for _, c := range conc {
			ref := perWorkload(groups[key{s, c, sizes[0]}])
			for _, ps := range sizes {
				g := groups[key{s, c, ps}]
				if len(g) == 0 {
					continue
				}
				r := PageSizeRow{Strategy: s, Concurrency: c, PageSize: ps, Samples: len(g)}
				var all []int64
				for _, x := range g {
					all = append(all, int64(x.EndToEnd))
					r.Faults += float64(x.Faults)
					r.MiBCopied += float64(x.BytesCopied) / (1 << 20)
					if x.HotSource == "cxl" {
						r.HotFromCXL++
					}
				}
				r.Faults /= float64(len(g))
				r.MiBCopied /= float64(len(g))
				r.P50 = med(all)
				var sum float64
				var n int
				for w, t := range perWorkload(g) {
					if t0, ok := ref[w]; ok && t0 > 0 && t > 0 {
						sum += math.Log(float64(t) / float64(t0))
						n++
					}
				}
				if n > 0 {
					r.Ratio = math.Exp(sum / float64(n))
				}
				rows = append(rows, r)
			}
		}
	}
	return rows
}

// WritePageSizeTable prints the rows, and a line per unsupported pair.
func WritePageSizeTable(w io.Writer, rows []PageSizeRow, strategies []string, sizes []uint32) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "strategy\tconc\tpages\tVMs\tp50 end-to-end\tfaults/VM\tMiB copied/VM\tvs 4 KiB\thot from CXL\t")
	for _, r := range rows {
		ratio := "-"
		if r.PageSize != sizes[0] && r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2fx", r.Ratio)
		}
		cxl := "-"
		if r.HotFromCXL > 0 || r.Strategy == Aquifer || r.Strategy == AquiferEarly || r.Strategy == AquiferCXLOnly {
			cxl = fmt.Sprintf("%d/%d", r.HotFromCXL, r.Samples)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.2fms\t%.0f\t%.1f\t%s\t%s\t\n", r.Strategy, r.Concurrency, pageSizeName(r.PageSize), r.Samples,
			float64(r.P50)/1e6, r.Faults, r.MiBCopied, ratio, cxl)
	}
	tw.Flush()
	for _, s := range strategies {
		for _, ps := range sizes {
			if ok, why := PageSizeSupport(s, ps); !ok {
				fmt.Fprintf(w, "%s at %s pages: unsupported: %s\n", s, pageSizeName(ps), why)
			}
		}
	}
}

func pageSizeName(ps uint32) string {
	if ps == hugetlb.PageSize {
		return "2 MiB"
	}
	return strconv.Itoa(int(ps)/1024) + " KiB"
}
