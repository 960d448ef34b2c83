package pagerd

import (
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the daemon's Prometheus collectors.
type Metrics struct {
	Restores        *prometheus.CounterVec
	RestoreSeconds  prometheus.Histogram
	PreinstallSecs  prometheus.Histogram
	PreinstallBytes prometheus.Counter
	Faults          *prometheus.CounterVec
	ColdReadSeconds prometheus.Histogram
	ColdBytes       prometheus.Counter
	ActiveVMs       prometheus.Gauge
	RefusedPeers    prometheus.Counter
	// Takeovers (adopt.go, handoff.go).
	Adoptions      *prometheus.CounterVec
	AdoptStall     *prometheus.HistogramVec
	Handoffs       *prometheus.CounterVec
	HandoffSeconds prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aquifer_restores_total", Help: "Restores by outcome (ok, failed).",
		}, []string{"outcome"}),
		RestoreSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aquifer_restore_ready_seconds", Help: "From handshake to hot set installed (VM may resume).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		PreinstallSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aquifer_preinstall_seconds", Help: "Time to pre-install the hot set.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		PreinstallBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aquifer_preinstall_bytes_total", Help: "Bytes of hot pages pre-installed.",
		}),
		Faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aquifer_faults_total", Help: "Demand faults served, by tier (zero, hot, cold).",
		}, []string{"tier"}),
		ColdReadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aquifer_cold_read_seconds", Help: "Total cold-tier read time per restore.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 2, 20),
		}),
		ColdBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aquifer_cold_bytes_total", Help: "Bytes read from the cold tier.",
		}),
		ActiveVMs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aquifer_active_vms", Help: "VMs currently served.",
		}),
		RefusedPeers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aquifer_uffd_refused_peers_total", Help: "Connections to VM sockets refused because the peer was not the expected VMM.",
		}),
		Adoptions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aquifer_adoptions_total",
			Help: "VMs a predecessor served, found at start (from=restart) or handed over (from=handoff), by outcome: served, waiting (socket listening again), vmm_gone, expired, unreadable, failed.",
		}, []string{"from", "outcome"}),
		AdoptStall: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aquifer_adoption_stall_seconds",
			Help:    "Per taken-over VM: from the takeover's start (this daemon's start after a restart, the handoff's start) to the first fault this daemon served for it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 20),
		}, []string{"from"}),
		Handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aquifer_handoffs_total", Help: "Planned handoffs, by role (sent: to a successor; received) and outcome (ok, aborted).",
		}, []string{"role", "outcome"}),
		HandoffSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "aquifer_handoff_seconds", Help: "Duration of a completed handoff, from the successor's connection to its last message.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	reg.MustRegister(m.Adoptions, m.AdoptStall, m.Handoffs, m.HandoffSeconds)
	reg.MustRegister(m.Restores, m.RestoreSeconds, m.PreinstallSecs, m.PreinstallBytes, m.Faults,
		m.ColdReadSeconds, m.ColdBytes, m.ActiveVMs, m.RefusedPeers)
	return m
}

func (m *Metrics) observe(rep *pager.Report) {
	m.PreinstallSecs.Observe(rep.Preinstall.Seconds())
	m.PreinstallBytes.Add(float64(rep.PreinstallBytes))
	m.Faults.WithLabelValues("zero").Add(float64(rep.ZeroFaults))
	m.Faults.WithLabelValues("hot").Add(float64(rep.HotFaults))
	m.Faults.WithLabelValues("cold").Add(float64(rep.ColdFaults))
	m.ColdReadSeconds.Observe(rep.ColdReadTime.Seconds())
	m.ColdBytes.Add(float64(rep.ColdBytesRead))
}
