package scaling

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strings"

	"github.com/aquifer-pool/aquifer/bench"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var colors = bench.Palette

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, x, y
	p.Title.TextStyle.Font.Size = 15
	p.X.Label.TextStyle.Font.Size, p.Y.Label.TextStyle.Font.Size = 13, 13
	p.X.Tick.Label.Font.Size, p.Y.Tick.Label.Font.Size = 11, 11
	p.Legend.TextStyle.Font.Size = 12
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), -vg.Points(4)
	p.Add(plotter.NewGrid())
	return p
}

func line(p *plot.Plot, name string, pts plotter.XYs, i int, dashed bool) {
	l, s, err := plotter.NewLinePoints(pts)
	if err != nil {
		return
	}
	l.Color, l.Width = colors[i%len(colors)], vg.Points(2)
	if dashed {
		l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
	}
	s.Color, s.Shape = colors[i%len(colors)], draw.CircleGlyph{}
	p.Add(l, s)
	p.Legend.Add(name, l, s)
}

// WritePlots draws the plan: NAME-host (p50 against concurrency per core
// count, the measured points with their intervals) and NAME-cluster
// (each resource's utilisation against the cluster's restore rate), each
// as PNG and SVG.
func WritePlots(pl *Plan, path string) ([]string, error) {
	base := strings.TrimSuffix(path, filepath.Ext(path))
	w := pl.Workload
	// Host.
	ph := newPlot(fmt.Sprintf("One host: restore p50 against concurrency (%s)", w.Name), "concurrent restores (log scale)",
		"end-to-end p50, ms (log scale)")
	ph.X.Scale, ph.Y.Scale = plot.LogScale{}, plot.LogScale{}
	ph.X.Tick.Marker, ph.Y.Tick.Marker = bench.Ticks125{}, bench.Ticks125{}
	concs := []int{1, 2, 4, 8, 16, 32, 64}
	ymin, ymax := math.Inf(1), 0.0
	cal := pl.Calibration
	for i, cores := range []int{cal.Cores, 16, 32, 64} {
		h := pl.Host
		name := fmt.Sprintf("model, %d cores", cores)
		if cores == cal.Cores {
			h = CalibrationHost(cores, 0)
			name = fmt.Sprintf("model, calibration machine (%d cores)", cores)
		} else {
			h.Cores = cores
		}
		var pts plotter.XYs
		for _, c := range concs {
			v := float64(SimulateHost(h, w, c).P50) / 1e6
			pts = append(pts, plotter.XY{X: float64(c), Y: v})
			ymin, ymax = math.Min(ymin, v), math.Max(ymax, v)
		}
		line(ph, name, pts, i, cores != cal.Cores)
	}
	// Measured points (the workload's, or the mean of every workload's).
	meas := map[int][3]float64{}
	for _, ck := range pl.Validation {
		if w.Name != ck.Workload && !strings.HasPrefix(w.Name, "mean") {
			continue
		}
		m := meas[ck.Concurrency]
		m[0] += float64(ck.Measured) / 1e6
		m[1] += float64(ck.MeasuredCI[0]) / 1e6
		m[2] += float64(ck.MeasuredCI[1]) / 1e6
		meas[ck.Concurrency] = m
	}
	n := 1.0
	if strings.HasPrefix(w.Name, "mean") {
		n = float64(len(cal.Workloads))
	}
	if len(meas) > 0 {
		var pts plotter.XYs
		var errs plotter.YErrors
		for _, c := range concs {
			if m, ok := meas[c]; ok {
				pts = append(pts, plotter.XY{X: float64(c), Y: m[0] / n})
				errs = append(errs, struct{ Low, High float64 }{m[0]/n - m[1]/n, m[2]/n - m[0]/n})
				ymin, ymax = math.Min(ymin, m[1]/n), math.Max(ymax, m[2]/n)
			}
		}
		s, _ := plotter.NewScatter(pts)
		s.Shape, s.Radius, s.Color = draw.BoxGlyph{}, vg.Points(4), color.Black
		eb := &plotter.YErrorBars{XYs: pts, YErrors: errs, LineStyle: draw.LineStyle{Color: color.Black, Width: vg.Points(1.5)}, CapWidth: vg.Points(8)}
		ph.Add(s, eb)
		ph.Legend.Add("measured on the calibration machine (95% CI)", s)
	}
	ph.Y.Min, ph.Y.Max = math.Max(ymin/1.5, 1e-3), ymax*6 // room for the legend above the lines
	ph.X.Min, ph.X.Max = 0.8, 80
	// Cluster.
	var files []string
	save := func(p *plot.Plot, name string) error {
		for _, ext := range []string{".png", ".svg"} {
			out := name + ext
			if err := p.Save(11*vg.Inch, 6*vg.Inch, out); err != nil {
				return err
			}
			files = append(files, out)
		}
		return nil
	}
	if err := save(ph, base+"-host"); err != nil {
		return files, err
	}
	if pl.Cluster == nil {
		return files, nil
	}
	c := pl.Cluster.Cluster
	pc := newPlot(fmt.Sprintf("Cluster: %d hosts, %d pods, %d memory nodes (%s)", c.Hosts, c.Pods, c.MemoryNodes, w.Name),
		"cluster-wide restores per second (log scale)", "utilisation (log scale; dashed: target)")
	pc.X.Scale, pc.Y.Scale = plot.LogScale{}, plot.LogScale{}
	pc.X.Tick.Marker, pc.Y.Tick.Marker = bench.Ticks125{}, bench.Ticks125{}
	var rates []float64
	for r := 100.0; r <= 1e6; r *= math.Sqrt(10) {
		rates = append(rates, r)
	}
	series := map[string]plotter.XYs{}
	var order []string
	for _, r := range rates {
		cc := c
		cc.Rate = r
		res, err := PlanCluster(cc, w)
		if err != nil {
			return files, err
		}
		for _, l := range res.Loads {
			if math.IsInf(l.Utilisation, 0) || l.Utilisation <= 0 || strings.HasSuffix(l.Resource, "capacity") {
				continue
			}
			if _, ok := series[l.Resource]; !ok {
				order = append(order, l.Resource)
			}
			series[l.Resource] = append(series[l.Resource], plotter.XY{X: r, Y: l.Utilisation})
		}
	}
	for i, name := range order {
		line(pc, name, series[name], i, false)
	}
	tgt := plotter.NewFunction(func(float64) float64 { return c.Target })
	tgt.Color, tgt.Width, tgt.Dashes = color.RGBA{0xe1, 0x57, 0x59, 255}, vg.Points(1.5), []vg.Length{vg.Points(4), vg.Points(3)}
	pc.Add(tgt)
	pc.Y.Min, pc.Y.Max = 1e-4, 50
	pc.X.Min, pc.X.Max = rates[0], rates[len(rates)-1]
	return files, save(pc, base+"-cluster")
}
