package bench

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Palette is the charts' colours (colour-blind friendly, Tableau 10 first).
var Palette = []color.RGBA{{0x4e, 0x79, 0xa7, 255}, {0xf2, 0x8e, 0x2b, 255}, {0xe1, 0x57, 0x59, 255}, {0x76, 0xb7, 0xb2, 255},
	{0x59, 0xa1, 0x4f, 255}, {0xed, 0xc9, 0x48, 255}, {0xb0, 0x7a, 0xa1, 255}, {0x9c, 0x75, 0x5f, 255},
	{0x55, 0x55, 0x55, 255}, {0xff, 0x9d, 0xa7, 255}, {0xba, 0xb0, 0xac, 255}, {0x1f, 0x3a, 0x5f, 255}}

// bars is a group of bars (one per x) with 95% whiskers, drawn from the
// bottom of the axis so that a log axis works.
type bars struct {
	xs, ys, lo, hi []float64
	offset, width  vg.Length
	color          color.Color
}

func (b *bars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	y0 := trY(p.Y.Min)
	ls := draw.LineStyle{Color: color.Black, Width: vg.Points(1)}
	for k := range b.xs {
		if b.ys[k] <= 0 {
			continue
		}
		x := trX(b.xs[k]) + b.offset
		y := trY(b.ys[k])
		c.FillPolygon(b.color, []vg.Point{{X: x - b.width/2, Y: y0}, {X: x + b.width/2, Y: y0}, {X: x + b.width/2, Y: y}, {X: x - b.width/2, Y: y}})
		if b.hi[k] > b.lo[k] && b.lo[k] > 0 {
			lo, hi := trY(b.lo[k]), trY(b.hi[k])
			cap := max(b.width/3, vg.Points(1.5))
			c.StrokeLine2(ls, x, lo, x, hi)
			c.StrokeLine2(ls, x-cap, lo, x+cap, lo)
			c.StrokeLine2(ls, x-cap, hi, x+cap, hi)
		}
	}
}

func (b *bars) DataRange() (xmin, xmax, ymin, ymax float64) {
	xmin, xmax, ymin, ymax = math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for k := range b.xs {
		xmin, xmax = min(xmin, b.xs[k]-0.5), max(xmax, b.xs[k]+0.5)
		for _, v := range []float64{b.ys[k], b.lo[k], b.hi[k]} {
			if v > 0 {
				ymin, ymax = min(ymin, v), max(ymax, v)
			}
		}
	}
	return
}

func (b *bars) Thumbnail(c *draw.Canvas) {
	r := c.Rectangle
	c.FillPolygon(b.color, []vg.Point{r.Min, {X: r.Max.X, Y: r.Min.Y}, r.Max, {X: r.Min.X, Y: r.Max.Y}})
}

// Ticks125 marks 1, 2 and 5 of every decade in range (a log axis that
// stays readable over a few decades).
type Ticks125 struct{}

// Ticks implements plot.Ticker.
func (Ticks125) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for e := math.Floor(math.Log10(lo)) - 1; e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < lo*0.999 || v > hi*1.001 {
				continue
			}
			out = append(out, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', 4, 64)})
		}
	}
	if len(out) < 2 {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	return out
}

func styleAxes(p *plot.Plot) {
	p.Title.TextStyle.Font.Size = 15
	p.X.Label.TextStyle.Font.Size = 13
	p.Y.Label.TextStyle.Font.Size = 13
	p.X.Tick.Label.Font.Size = 11
	p.Y.Tick.Label.Font.Size = 11
	p.Title.Padding = vg.Points(8)
}

// PlotVariants are the variants the time figure shows (the speedup figure
// shows every one).
func (r *Report) plotVariants() []string {
	prim := r.PrimaryStorage
	want := []string{Firecracker + "@" + prim, REAP + "@" + prim, FaaSnap + "@" + prim, Firecracker + "@" + StorageDRAM,
		REAP + "@" + StorageDRAM, FaaSnap + "@" + StorageDRAM, Aquifer, AquiferEarly, Warm, NoRestore}
	have := map[string]bool{}
	for _, x := range r.Results {
		have[x.Variant] = true
	}
	var out []string
	for _, v := range want {
		if have[v] {
			out = append(out, v)
		}
	}
	if len(out) == 0 { // no known variant: all of them
		for _, x := range r.Results {
			if !slices.Contains(out, x.Variant) {
				out = append(out, x.Variant)
			}
		}
	}
	return out
}

// WritePlots writes the two figures, each as PNG and SVG: path (its
// extension replaced) for end-to-end times per workload, one panel per
// concurrency level, and path-speedup for the geomean speedups with their
// intervals. It returns the files written.
func (r *Report) WritePlots(path string) ([]string, error) {
	base := strings.TrimSuffix(path, filepath.Ext(path))
	levels := r.levels()
	if len(levels) == 0 {
		return nil, fmt.Errorf("nothing to plot")
	}
	variants := r.plotVariants()
	var workloads []string
	for _, x := range r.Results {
		if !slices.Contains(workloads, x.Workload) {
			workloads = append(workloads, x.Workload)
		}
	}
	sort.Strings(workloads)
	// Figure 1: times.
	var timePanels []*plot.Plot
	legend := plot.NewLegend()
	legend.TextStyle.Font.Size = 12
	legend.Top, legend.Left = true, true
	legend.Padding = vg.Points(4)
	for li, c := range levels {
		p := plot.New()
		styleAxes(p)
		p.Title.Text = fmt.Sprintf("Concurrency %d: end-to-end p50 per workload (whiskers: 95%% CI)", c)
		p.Y.Label.Text = "ms (log scale)"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = Ticks125{}
		p.Add(plotter.NewGrid())
		n := len(variants)
		w := vg.Points(float64(560) / float64(len(workloads)*(n+1)))
		lo := math.Inf(1)
		for i, v := range variants {
			b := &bars{width: w, color: Palette[i%len(Palette)], offset: w * vg.Length(float64(i)-float64(n-1)/2)}
			for j, wl := range workloads {
				for _, x := range r.Results {
					if x.Concurrency == c && x.Workload == wl && x.Variant == v {
						b.xs = append(b.xs, float64(j))
						b.ys = append(b.ys, float64(x.P50)/1e6)
						b.lo = append(b.lo, float64(x.P50CI[0])/1e6)
						b.hi = append(b.hi, float64(x.P50CI[1])/1e6)
						lo = min(lo, float64(x.P50)/1e6, float64(max(x.P50CI[0], 1))/1e6)
					}
				}
			}
			p.Add(b)
			if li == 0 {
				legend.Add(v, b)
			}
		}
		p.NominalX(workloads...)
		p.Y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
		timePanels = append(timePanels, p)
	}
	// Figure 2: geomean speedups.
	var spPanels []*plot.Plot
	for _, c := range levels {
		sp, ci := r.ByConcurrency[strconv.Itoa(c)], r.ByConcurrencyCI[strconv.Itoa(c)]
		keys := make([]string, 0, len(sp))
		for k := range sp {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return sp[keys[i]] > sp[keys[j]] })
		p := plot.New()
		styleAxes(p)
		p.Title.Text = fmt.Sprintf("Concurrency %d: geomean speedup of aquifer, T(strategy)/T(aquifer) (whiskers: 95%% CI)", c)
		p.Y.Label.Text = "speedup (log scale; 1 = as fast as aquifer)"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = Ticks125{}
		p.Add(plotter.NewGrid())
		b := &bars{width: vg.Points(float64(520) / float64(max(1, len(keys)))), color: Palette[0]}
		var names []string
		lo := 1.0
		for i, k := range keys {
			b.xs = append(b.xs, float64(i))
			b.ys = append(b.ys, sp[k])
			b.lo = append(b.lo, ci[k][0])
			b.hi = append(b.hi, ci[k][1])
			names = append(names, r.keyName(k))
			lo = min(lo, sp[k], ci[k][0])
		}
		p.Add(b)
		one := plotter.NewFunction(func(float64) float64 { return 1 })
		one.Color, one.Width, one.Dashes = color.RGBA{0xe1, 0x57, 0x59, 255}, vg.Points(1.5), []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(one)
		p.NominalX(names...)
		p.X.Tick.Label.Rotation = math.Pi / 5
		p.X.Tick.Label.XAlign = draw.XRight
		p.X.Tick.Label.YAlign = draw.YCenter
		p.Y.Min = math.Pow(10, math.Floor(math.Log10(max(lo, 1e-3))))
		spPanels = append(spPanels, p)
	}
	var written []string
	for _, f := range []struct {
		name   string
		panels []*plot.Plot
		legend *plot.Legend
	}{{base, timePanels, &legend}, {base + "-speedup", spPanels, nil}} {
		for _, ext := range []string{".png", ".svg"} {
			out := f.name + ext
			if err := drawFigure(out, f.panels, f.legend, ext); err != nil {
				return written, err
			}
			written = append(written, out)
		}
	}
	return written, nil
}

// drawFigure stacks panels vertically, the legend (if any) in a column of
// its own on the right, clear of every bar.
func drawFigure(path string, panels []*plot.Plot, legend *plot.Legend, ext string) error {
	width, panelH := vg.Points(1100), vg.Points(380)
	legendW := vg.Length(0)
	if legend != nil {
		legendW = vg.Points(170)
	}
	height := panelH * vg.Length(len(panels))
	var c vg.CanvasWriterTo
	switch ext {
	case ".png":
		img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(110))
		c = vgimg.PngCanvas{Canvas: img}
	default:
		c = vgsvg.New(width, height)
	}
	dc := draw.New(c)
	area := draw.Crop(dc, 0, -legendW, 0, 0)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6),
		PadRight: vg.Points(10), PadY: vg.Points(18)}
	grid := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		grid[i] = []*plot.Plot{p}
	}
	canvases := plot.Align(grid, tiles, area)
	for i, p := range panels {
		p.Draw(canvases[i][0])
	}
	if legend != nil {
		lc := draw.Crop(dc, width-legendW, 0, 0, -vg.Points(30))
		legend.Draw(lc)
	}
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return err
	}
	return WriteFileAtomic(path, buf.Bytes())
}

// keyName is a speedup key as a reader wants it: the variant, with the
// primary storage spelled out.
func (r *Report) keyName(k string) string {
	n := strings.TrimPrefix(k, "vs_")
	if strings.Contains(n, "@") || r.PrimaryStorage == "" {
		return n
	}
	if diskBased(n) || n == "best_baseline" {
		return n + "@" + r.PrimaryStorage
	}
	return n
}
