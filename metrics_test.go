package resilient

import (
	"fmt"
	"testing"

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
	m := newUpstreamMetrics("metrics-test:1")
	m.requests[OutcomeBreakerOpen].Inc()
	m.retried(OutcomeUpstreamStatus, 503)
	m.retried(OutcomeReset, 0)
	if got := testutil.ToFloat64(metrics.requests.WithLabelValues("metrics-test:1", "breaker_open")); got != 1 {
		t.Errorf("requests_total{outcome=breaker_open} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.retries.WithLabelValues("metrics-test:1", "503")); got != 1 {
		t.Errorf("retries_total{reason=503} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.retries.WithLabelValues("metrics-test:1", "reset")); got != 1 {
		t.Errorf("retries_total{reason=reset} = %v, want 1", got)
	}
	n, err := testutil.GatherAndCount(reg, "caddy_resilient_requests_total")
	if err != nil || n == 0 {
		t.Errorf("caddy_resilient_requests_total not gathered from the registry: %d, %v", n, err)
	}
}
