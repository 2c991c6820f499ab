package resilient

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestUpstreamLabelCardinalityIsCapped(t *testing.T) {
	metrics.mu.Lock()
	saved := metrics.labels
	metrics.labels = map[string]string{}
	metrics.mu.Unlock()
	t.Cleanup(func() {
		metrics.mu.Lock()
		metrics.labels = saved
		metrics.mu.Unlock()
	})
	for i := 0; i < maxUpstreamLabels; i++ {
		addr := fmt.Sprintf("10.0.0.%d:443", i)
		if l := upstreamLabel(addr); l != addr {
			t.Fatalf("upstream %d labelled %q, want its address", i, l)
		}
	}
	if l := upstreamLabel("dynamic.example:443"); l != "other" {
		t.Fatalf("an upstream past the cap is labelled %q, want other", l)
	}
	// known upstreams keep their label
	if l := upstreamLabel("10.0.0.7:443"); l != "10.0.0.7:443" {
		t.Fatalf("a known upstream became %q", l)
	}
}

func TestRegisterMetricsTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	for i := 0; i < 2; i++ {
		if err := registerMetrics(reg); err != nil {
			t.Fatalf("registration %d: %v", i+1, err)
		}
	}
	label := fmt.Sprintf("metrics-test-%d:1", time.Now().UnixNano()) // fresh under -count
	m := newUpstreamMetrics(label, false, false)
	m.request(OutcomeBreakerOpen, time.Millisecond)
	m.retried(OutcomeUpstreamStatus, 503)
	m.retried(OutcomeReset, 0)
	if got := testutil.ToFloat64(metrics.requests.WithLabelValues(label, "breaker_open")); got != 1 {
		t.Errorf("requests_total{outcome=breaker_open} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.retries.WithLabelValues(label, "503")); got != 1 {
		t.Errorf("retries_total{reason=503} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.retries.WithLabelValues(label, "reset")); got != 1 {
		t.Errorf("retries_total{reason=reset} = %v, want 1", got)
	}
	n, err := testutil.GatherAndCount(reg, "caddy_resilient_requests_total")
	if err != nil || n == 0 {
		t.Errorf("caddy_resilient_requests_total not gathered from the registry: %d, %v", n, err)
	}
}

func TestUpstreamSeriesAreCreatedOnFirstUse(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("metrics-lazy-%d:1", time.Now().UnixNano()) // fresh under -count
	count := func() int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "upstream" && lp.GetValue() == label {
						n++
						if h := m.GetHistogram(); h != nil {
							n += len(h.GetBucket()) + 2 // as scraped: the buckets, +Inf and _sum beside _count
						}
					}
				}
			}
		}
		return n
	}
	m := newUpstreamMetrics(label, false, false)
	before := count()
	m.request(OutcomeOK, 20*time.Millisecond)
	m.attempt(OutcomeOK)
	got := count()
	// requests_total, attempts_total, the duration histogram, pool_in_flight
	want := before + 2 + len(durationBuckets) + 3
	if got != want {
		t.Fatalf("an upstream that answered ok once has %d series, want %d", got, want)
	}
	if got > 40 {
		t.Fatalf("%d series for one ok upstream, over the ~40 of SPEC §8", got)
	}
	if n, _ := testutil.GatherAndCount(reg, "caddy_resilient_pool_wait_seconds"); n != 0 {
		t.Errorf("pool_wait_seconds exists without max_conns")
	}
}
