package resilient

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// freshLabels gives t an empty table of upstream labels, and puts the
// process's back when t ends.
func freshLabels(t *testing.T) {
	t.Helper()
	metrics.once.Do(initMetrics)
	metrics.mu.Lock()
	saved := metrics.labels
	metrics.labels = map[string]*upstreamLabelRef{}
	metrics.mu.Unlock()
	t.Cleanup(func() {
		metrics.mu.Lock()
		metrics.labels = saved
		metrics.mu.Unlock()
	})
}

func TestUpstreamLabelCardinalityIsCapped(t *testing.T) {
	freshLabels(t)
	for i := 0; i < maxUpstreamLabels; i++ {
		addr := fmt.Sprintf("10.0.0.%d:443", i)
		if l := holdLabel(addr); l != addr {
			t.Fatalf("upstream %d labelled %q, want its address", i, l)
		}
	}
	if l := holdLabel("dynamic.example:443"); l != "other" {
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

// breakerGauge scrapes breaker_state as Prometheus would, and returns
// the sample of addr's upstream; ok is false when there is none.
func breakerGauge(t *testing.T, addr string) (v float64, ok bool) {
	t.Helper()
	metrics.once.Do(initMetrics)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.breakerState)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := upstreamLabel(addr)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "upstream" && lp.GetValue() == want {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// transitions reads breaker_transitions_total{upstream=addr,to=to}.
func transitions(addr, to string) float64 {
	metrics.once.Do(initMetrics)
	return testutil.ToFloat64(metrics.breakerChanges.WithLabelValues(upstreamLabel(addr), to))
}

// expectGauge fails t unless breaker_state of addr reads want (-1: no
// sample at all).
func expectGauge(t *testing.T, addr string, want float64, when string) {
	t.Helper()
	v, ok := breakerGauge(t, addr)
	if !ok {
		v = -1
	}
	if v != want {
		t.Errorf("breaker_state %s = %v, want %v", when, v, want)
	}
}

func TestBreakerStateGaugeCountsAnOverrideBeforeAndAfterTheFirstRequest(t *testing.T) {
	addr := "forced-ahead.test:443"
	t.Cleanup(func() { applyReset(addr) })
	expectGauge(t, addr, -1, "before anything")
	opened := transitions(addr, "open")

	// the operator opens the breaker ahead of a known outage
	if !applyForce(addr, forceOpen, time.Minute, "") {
		t.Fatal("force_open refused")
	}
	expectGauge(t, addr, 2, "forced open before any traffic")
	if got := transitions(addr, "open"); got != opened+1 {
		t.Errorf("transitions{to=open} went from %v to %v, want +1", opened, got)
	}

	// the first request makes its breaker: still open, no new transition
	cfg := breakerConfig(t, nil)
	b := acquireBreaker(cfg, addr, nil, nil)
	t.Cleanup(b.drop)
	if _, _, ok := b.allow(nil); ok {
		t.Fatal("the first request was let through a forced-open breaker")
	}
	expectGauge(t, addr, 2, "after the first request")
	if got := transitions(addr, "open"); got != opened+1 {
		t.Errorf("transitions{to=open} = %v after the first request, want %v", got, opened+1)
	}

	closed := transitions(addr, "closed")
	applyReset(addr)
	expectGauge(t, addr, 0, "after reset")
	if got := transitions(addr, "closed"); got != closed+1 {
		t.Errorf("transitions{to=closed} went from %v to %v on reset, want +1", closed, got)
	}
}

func TestBreakerStateGaugeHalfOpensWithNoTraffic(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	addr := "quiet-after-trip.test:443"
	cfg := breakerConfig(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(1)
		c.OpenFor = caddy.Duration(50 * time.Millisecond)
	})
	b := acquireBreaker(cfg, addr, zap.New(core), nil)
	t.Cleanup(b.drop)
	expectGauge(t, addr, 0, "from its first request on")
	halfOpened := transitions(addr, "half_open")

	breakerSend(t, b, true)
	expectGauge(t, addr, 2, "once tripped")

	// no request, no scrape, no admin call: the move to half-open comes
	// when open_for runs out, and is counted and logged then
	deadline := time.Now().Add(5 * time.Second)
	for transitions(addr, "half_open") == halfOpened {
		if time.Now().After(deadline) {
			t.Fatal("no transition to half_open 5s after a 50ms open_for ran out, with no traffic")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := logs.FilterMessage("breaker state changed").FilterField(zap.String("to", "half_open")).Len(); n != 1 {
		t.Errorf("%d warn entries for open -> half_open, want 1", n)
	}
	expectGauge(t, addr, 1, "after open_for")
}

func TestBreakerStateGaugeOfAnOverrideThatRunsOut(t *testing.T) {
	addr := "forced-briefly.test:443"
	t.Cleanup(func() { applyReset(addr) })
	closed := transitions(addr, "closed")
	if !applyForce(addr, forceOpen, 30*time.Millisecond, "") {
		t.Fatal("force_open refused")
	}
	expectGauge(t, addr, 2, "while forced open")
	deadline := time.Now().Add(5 * time.Second)
	for transitions(addr, "closed") == closed {
		if time.Now().After(deadline) {
			t.Fatal("the end of a 30ms override was not counted within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	expectGauge(t, addr, -1, "once the override of an upstream never seen ran out")
}

func TestUpstreamLabelsOfUpstreamsGoneAreRecycled(t *testing.T) {
	freshLabels(t)
	run := time.Now().UnixNano()
	addr := func(i int) string { return fmt.Sprintf("r%d-%d.test:443", run, i) }
	// the cap is reached by upstreams of which all but the first are gone
	held := newUpstreamMetrics(addr(0), false, false)
	for i := 1; i < maxUpstreamLabels; i++ {
		m := newUpstreamMetrics(addr(i), false, false)
		m.request(OutcomeOK, time.Millisecond)
		m.release()
	}
	// one comes back, as after a config reload: it keeps its label and series
	back := newUpstreamMetrics(addr(1), false, false)
	if back.label != addr(1) || testutil.ToFloat64(metrics.requests.WithLabelValues(addr(1), "ok")) != 1 {
		t.Fatalf("an upstream back under the cap lost its label or its series")
	}
	// a new one takes the label of the one gone the longest
	late := newUpstreamMetrics("late-"+addr(0), false, false)
	if late.label == "other" {
		t.Fatal("a new upstream got other while labels of upstreams gone were there")
	}
	metrics.mu.Lock()
	_, still := metrics.labels[addr(2)]
	metrics.mu.Unlock()
	if still {
		t.Fatal("the label of the upstream gone the longest was not the one given")
	}
	if got := testutil.ToFloat64(metrics.requests.WithLabelValues(addr(2), "ok")); got != 0 {
		t.Errorf("the series of a recycled label stayed: %v", got)
	}
	held.release()
	back.release()
	late.release()
}
