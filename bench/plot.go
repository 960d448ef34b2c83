package bench

import (
	"fmt"
	"image/color"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// WritePlot draws p50 end-to-end time per workload and strategy at the
// lowest concurrency level, normalised to firecracker when it ran, as a
// grouped bar chart (.svg or .png by the file name).
func (r *Report) WritePlot(path string) error {
	minC := -1
	for _, x := range r.Results {
		if minC < 0 || x.Concurrency < minC {
			minC = x.Concurrency
		}
	}
	var workloads, strategies []string
	val := map[[2]string]float64{}
	base := map[string]float64{}
	for _, x := range r.Results {
		if x.Concurrency != minC {
			continue
		}
		if !contains(workloads, x.Workload) {
			workloads = append(workloads, x.Workload)
		}
		if !contains(strategies, x.Strategy) {
			strategies = append(strategies, x.Strategy)
		}
		val[[2]string{x.Workload, x.Strategy}] = float64(x.P50) / 1e6
		if x.Strategy == Firecracker {
			base[x.Workload] = float64(x.P50) / 1e6
		}
	}
	sort.Strings(workloads)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("End-to-end time, p50, concurrency %d (%s corpus)", minC, r.Corpus)
	p.Y.Label.Text = "milliseconds"
	if len(base) == len(workloads) {
		p.Y.Label.Text = "relative to firecracker"
	}
	w := vg.Points(float64(60) / float64(max(1, len(strategies))))
	palette := []color.RGBA{{0x4e, 0x79, 0xa7, 255}, {0xf2, 0x8e, 0x2b, 255}, {0xe1, 0x57, 0x59, 255}, {0x76, 0xb7, 0xb2, 255},
		{0x59, 0xa1, 0x4f, 255}, {0xed, 0xc9, 0x48, 255}, {0xb0, 0x7a, 0xa1, 255}, {0x9c, 0x75, 0x5f, 255},
		{0x55, 0x55, 0x55, 255}}
	ymax := 0.0
	for i, s := range strategies {
		vals := make(plotter.Values, len(workloads))
		for j, wl := range workloads {
			v := val[[2]string{wl, s}]
			if b := base[wl]; len(base) == len(workloads) && b > 0 {
				v /= b
			}
			vals[j] = v
			ymax = max(ymax, v)
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		bars.Color = palette[i%len(palette)]
		bars.Offset = w * vg.Length(float64(i)-float64(len(strategies)-1)/2)
		p.Add(bars)
		p.Legend.Add(s, bars)
	}
	// Leave the top third free for the legend.
	p.Y.Min, p.Y.Max = 0, ymax*1.55
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.Padding = vg.Points(2)
	p.Legend.XOffs = vg.Points(10)
	p.NominalX(workloads...)
	return p.Save(vg.Length(120+70*len(workloads))*vg.Points(1), 320, path)
}
