package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/wset"
)

// Options configure the demo.
type Options struct {
	// Bin is the aquifer binary to run children from (default: this one).
	Bin string
	// Dir holds the generated snapshot (default: a temporary directory).
	Dir string
	// MemSize of the synthetic snapshot (default 256 MiB).
	MemSize uint64
	// Runs per strategy (default 3).
	Runs int
	Out  io.Writer
}

type result struct {
	name string
	runs []*guest.Report
}

// Run executes the demo.
func Run(ctx context.Context, o Options) error {
	if o.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Bin = exe
	}
	if o.MemSize == 0 {
		o.MemSize = 256 << 20
	}
	if o.Runs <= 0 {
		o.Runs = 3
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "aquifer-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	mem := filepath.Join(o.Dir, "mem")
	fmt.Fprintf(o.Out, "demo: synthetic %d MiB snapshot (80%% zero pages, random and duplicated pages; corpus: synthetic) in %s\n", o.MemSize>>20, o.Dir)
	if _, err := testsnap.Write(mem, testsnap.Spec{Size: o.MemSize, Seed: 42}); err != nil {
		return err
	}
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: o.MemSize, Accesses: 8000, Pages: 4000, WriteFrac: 0.2, CPUs: 2, Think: 2 * time.Microsecond, Seed: 43})

	results := []*result{{name: "firecracker (File, cold page cache)"}, {name: "firecracker-uffd (aquifer handle)"}}
	for i := 0; i < o.Runs; i++ {
		// Interleave strategies so machine noise hits both alike.
		rep, err := guest.Run(ctx, guest.Config{MemPath: mem, Backend: guest.BackendFile, DropCache: true, VCPUs: 2, Trace: tr, ThinkScale: 1})
		if err != nil {
			return fmt.Errorf("file backend: %w", err)
		}
		results[0].runs = append(results[0].runs, rep)
		rep, err = runUffd(ctx, o, mem, tr, i)
		if err != nil {
			return fmt.Errorf("uffd backend: %w", err)
		}
		results[1].runs = append(results[1].runs, rep)
	}
	tw := tabwriter.NewWriter(o.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "strategy\trestore\tfirst touch\tend-to-end (median)\tpages verified")
	for _, r := range results {
		med := median(r.runs)
		fmt.Fprintf(tw, "%s\t%v\t%v\t%v\t%d\n", r.name, med.Restore.Round(time.Microsecond),
			med.FirstTouch.Round(time.Microsecond), med.EndToEnd.Round(time.Microsecond), med.Verified)
	}
	tw.Flush()
	fmt.Fprintln(o.Out, "demo: every touched byte matched the snapshot in every run")
	return nil
}

func runUffd(ctx context.Context, o Options, mem string, tr *wset.Trace, i int) (*guest.Report, error) {
	sock := filepath.Join(o.Dir, fmt.Sprintf("uffd-%d.sock", i))
	cmd := exec.CommandContext(ctx, o.Bin, "handle", "--socket", sock, "--mem", mem, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	for t0 := time.Now(); ; {
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Since(t0) > 10*time.Second {
			return nil, fmt.Errorf("handler socket %s did not appear", sock)
		}
		time.Sleep(2 * time.Millisecond)
	}
	rep, err := guest.Run(ctx, guest.Config{MemPath: mem, Backend: guest.BackendUffd, Socket: sock,
		Dialect: handshake.DialectV1_12, VCPUs: 2, Trace: tr, ThinkScale: 1})
	io.Copy(io.Discard, out)
	return rep, err
}

func median(rs []*guest.Report) *guest.Report {
	best := rs[0]
	sorted := append([]*guest.Report(nil), rs...)
	for i := range sorted {
		for j := i + 1; j < len(sorted); j++ {
			if sorted[j].EndToEnd < sorted[i].EndToEnd {
				sorted[i], sorted[j] = sorted[j], sorted[i]
			}
		}
	}
	if len(sorted) > 0 {
		best = sorted[len(sorted)/2]
	}
	return best
}
