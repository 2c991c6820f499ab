package resilient

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-resilient/resilient/fleet"
	"github.com/caddy-resilient/resilient/idempotency"
	"github.com/prometheus/client_golang/prometheus"
)

// maxUpstreamLabels caps the distinct values of the `upstream` label;
// past it, new upstreams (dynamic ones, say) share the value "other".
const maxUpstreamLabels = 100

// durationBuckets suit calls to external APIs, 5ms to 30s: an answer
// faster than 5ms on the other side of a network is rare.
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// waitBuckets suit a bounded wait (pool slot, rate-limit token): from
// none to a few seconds.
var waitBuckets = []float64{.001, .005, .025, .1, .25, .5, 1, 2.5, 5}

// metrics are the transport's Prometheus collectors. They are created
// once per process and registered into each config's registry.
var metrics = struct {
	once           sync.Once
	requests       *prometheus.CounterVec
	attempts       *prometheus.CounterVec
	retries        *prometheus.CounterVec
	retriesDenied  *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	breakerState   breakerStates
	breakerChanges *prometheus.CounterVec
	inFlight       *prometheus.GaugeVec
	poolWait       *prometheus.HistogramVec
	rateLimitWait  *prometheus.HistogramVec
	hedges         *prometheus.CounterVec
	fallbacks      *prometheus.CounterVec

	mu     sync.Mutex
	labels map[string]*upstreamLabelRef // upstream address -> its label, while in use
}{labels: map[string]*upstreamLabelRef{}}

// upstreamLabelRef is an upstream address with a label value of its own:
// held by the upstream's state in each transport and by its breakers.
type upstreamLabelRef struct {
	refs     int
	released time.Time // when the last hold was given back
}

func initMetrics() {
	const ns, sub = "caddy", "resilient"
	up := []string{"upstream"}
	metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "requests_total",
		Help: "Requests through the resilient transport, by upstream and outcome.",
	}, []string{"upstream", "outcome"})
	metrics.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "attempts_total",
		Help: "Tries made, the first one included, by upstream and the try's outcome.",
	}, []string{"upstream", "outcome"})
	metrics.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "retries_total",
		Help: "Retries made, by upstream and what the retried try ended in (an outcome or a status code).",
	}, []string{"upstream", "reason"})
	metrics.retriesDenied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "retries_denied_total",
		Help: "Retries that the retry conditions asked for but were refused, by upstream and reason.",
	}, []string{"upstream", "reason"})
	metrics.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
		Help:    "Time from the start of a request to its response headers or error, retries included.",
		Buckets: durationBuckets,
	}, []string{"upstream", "outcome"})
	metrics.breakerState = breakerStates{prometheus.NewDesc(
		prometheus.BuildFQName(ns, sub, "breaker_state"),
		"State of the upstream's circuit breaker, operator overrides included: 0 closed, 1 half-open, 2 open.",
		up, nil)}
	metrics.breakerChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "breaker_transitions_total",
		Help: "Circuit breaker state changes, by upstream and the state moved to.",
	}, []string{"upstream", "to"})
	metrics.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "pool_in_flight",
		Help: "Tries in flight to the upstream (each holds a connection slot).",
	}, up)
	metrics.poolWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Subsystem: sub, Name: "pool_wait_seconds",
		Help:    "Time spent waiting for a connection slot, for upstreams with pool.max_conns.",
		Buckets: waitBuckets,
	}, up)
	metrics.hedges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "hedges_total",
		Help: "Hedged attempts, by upstream and result: won (its answer was used), lost (it was not), denied (the breaker, the pool, the rate limit or the budget refused it).",
	}, []string{"upstream", "result"})
	metrics.fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "fallback_total",
		Help: "Requests of a fallback's methods that failed, by upstream and result: stale (a kept answer was served), miss (none was kept, or it was too old).",
	}, []string{"upstream", "result"})
	metrics.rateLimitWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Subsystem: sub, Name: "rate_limit_wait_seconds",
		Help:    "Time attempts waited for a rate-limit token, for upstreams with rate_limit.",
		Buckets: waitBuckets,
	}, up)
}

// registerMetrics registers the collectors into the config's registry;
// registering them again (several transports) is fine.
func registerMetrics(reg *prometheus.Registry) error {
	metrics.once.Do(initMetrics)
	return registerAll(reg, []prometheus.Collector{
		metrics.requests, metrics.attempts, metrics.retries, metrics.retriesDenied,
		metrics.duration, metrics.breakerState, metrics.breakerChanges,
		metrics.inFlight, metrics.poolWait, metrics.rateLimitWait, metrics.hedges, metrics.fallbacks,
	})
}

// idempotencyGauges are the process-wide totals of the idempotency
// records, read when scraped.
var idempotencyGauges = []prometheus.Collector{
	prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "idempotency_records",
		Help: "Idempotency-Key records kept by this process, in flight and completed.",
	}, func() float64 { n, _ := idempotency.Stats(); return float64(n) }),
	prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "idempotency_bytes",
		Help: "Bytes of the answers the Idempotency-Key records of this process keep, bodies and headers.",
	}, func() float64 { _, b := idempotency.Stats(); return float64(b) }),
	prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "idempotency_carried",
		Help: "Keyed requests being carried to the upstream's answer after their client was answered at its deadline.",
	}, func() float64 { return float64(carriedNow.Load()) }),
}

// registerIdempotencyMetrics registers the idempotency gauges too.
func registerIdempotencyMetrics(reg *prometheus.Registry) error {
	return registerAll(reg, idempotencyGauges)
}

// registerAll registers cs into reg; registering them again is fine.
func registerAll(reg *prometheus.Registry, cs []prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// registerFleetMetrics registers the fleet's collectors too.
func registerFleetMetrics(reg *prometheus.Registry) error {
	return registerAll(reg, fleet.Collectors())
}

// upstreamLabel returns the label value for an upstream address, folding
// upstreams past the cap into "other". It takes no hold of the label:
// the value of an upstream nothing holds is its address while there is
// room for it.
func upstreamLabel(addr string) string {
	metrics.mu.Lock()
	defer metrics.mu.Unlock()
	if _, ok := metrics.labels[addr]; ok || len(metrics.labels) < maxUpstreamLabels {
		return addr
	}
	return "other"
}

// holdLabel returns the label value of addr and takes a hold of it, to
// be given back with releaseLabel: while held, addr keeps its value.
// Under the cap a label stays when nothing holds it any more (a config
// reload lets go of every upstream's state before the new config takes
// it again). At the cap, the label of the upstream nothing has held for
// the longest is given to the new one, its series dropped, so that
// dynamic upstreams that come and go do not end up all "other"; when
// every label is held, new upstreams share "other", and hold nothing.
func holdLabel(addr string) string {
	metrics.mu.Lock()
	defer metrics.mu.Unlock()
	if r, ok := metrics.labels[addr]; ok {
		r.refs++
		return addr
	}
	if len(metrics.labels) >= maxUpstreamLabels {
		oldest := ""
		for a, r := range metrics.labels {
			if r.refs == 0 && (oldest == "" || r.released.Before(metrics.labels[oldest].released)) {
				oldest = a
			}
		}
		if oldest == "" {
			return "other"
		}
		delete(metrics.labels, oldest)
		forgetSeries(oldest)
	}
	metrics.labels[addr] = &upstreamLabelRef{refs: 1}
	return addr
}

// releaseLabel gives back a hold taken with holdLabel.
func releaseLabel(addr, label string) {
	if label != addr {
		return // "other": nothing was held
	}
	metrics.mu.Lock()
	defer metrics.mu.Unlock()
	if r, ok := metrics.labels[addr]; ok && r.refs > 0 {
		if r.refs--; r.refs == 0 {
			r.released = time.Now()
		}
	}
}

// forgetSeries drops every series of the upstream label l.
func forgetSeries(l string) {
	match := prometheus.Labels{"upstream": l}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{metrics.requests, metrics.attempts, metrics.retries, metrics.retriesDenied, metrics.duration,
		metrics.breakerChanges, metrics.inFlight, metrics.poolWait, metrics.rateLimitWait, metrics.hedges, metrics.fallbacks} {
		v.DeletePartialMatch(match)
	}
}

// upstreamMetrics holds the metric children of one upstream. Each is
// created when first used, not for every possible outcome up front: an
// upstream that only ever answered ok costs a handful of series.
// Once created, recording does not allocate.
type upstreamMetrics struct {
	addr     string
	label    string
	requests [numOutcomes]lazyCounter
	attempts [numOutcomes]lazyCounter
	duration [numOutcomes]lazyObserver
	denied   [numDenials]lazyCounter
	hedges   [numHedgeResults]lazyCounter
	fallback [numFallbackResults]lazyCounter
	retries  sync.Map // reason string -> prometheus.Counter
	inFlight prometheus.Gauge
	poolWait prometheus.Observer // nil without max_conns
	rlWait   prometheus.Observer // nil without rate_limit
}

func newUpstreamMetrics(addr string, pooled, limited bool) *upstreamMetrics {
	metrics.once.Do(initMetrics)
	m := &upstreamMetrics{addr: addr, label: holdLabel(addr)}
	m.inFlight = metrics.inFlight.WithLabelValues(m.label)
	if pooled {
		m.poolWait = metrics.poolWait.WithLabelValues(m.label)
	}
	if limited {
		m.rlWait = metrics.rateLimitWait.WithLabelValues(m.label)
	}
	return m
}

// release gives back the hold on the upstream's label.
func (m *upstreamMetrics) release() { releaseLabel(m.addr, m.label) }

// request counts a request that ended in o, and how long it took.
func (m *upstreamMetrics) request(o Outcome, took time.Duration) {
	m.requests[o].get(metrics.requests, m.label, o.String()).Inc()
	m.duration[o].get(metrics.duration, m.label, o.String()).Observe(took.Seconds())
}

// attempt counts a try that reached the upstream and ended in o.
func (m *upstreamMetrics) attempt(o Outcome) {
	m.attempts[o].get(metrics.attempts, m.label, o.String()).Inc()
}

// hedgeResult is how a hedged attempt ended, as hedges_total counts it.
type hedgeResult uint8

const (
	hedgeWon hedgeResult = iota
	hedgeLost
	hedgeDenied
	numHedgeResults
)

var hedgeResultNames = [numHedgeResults]string{"won", "lost", "denied"}

// fellBack counts a failed request of a fallback's methods that ended
// in r.
func (m *upstreamMetrics) fellBack(r fallbackResult) {
	m.fallback[r].get(metrics.fallbacks, m.label, fallbackResultNames[r]).Inc()
}

// fallbackGauges are the process-wide totals of the fallback's kept
// answers, read when scraped.
var fallbackGauges = []prometheus.Collector{
	prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "fallback_records",
		Help: "Answers the fallbacks of this process keep (Vary markers included).",
	}, func() float64 { return float64(fallbackUsage.Values()) }),
	prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "fallback_bytes",
		Help: "Bytes of the answers the fallbacks of this process keep, as max_memory counts them.",
	}, func() float64 { return float64(fallbackUsage.Bytes()) }),
}

// hedged counts a hedge that ended in r.
func (m *upstreamMetrics) hedged(r hedgeResult) {
	m.hedges[r].get(metrics.hedges, m.label, hedgeResultNames[r]).Inc()
}

// deniedRetry counts a retry refused for d.
func (m *upstreamMetrics) deniedRetry(d denial) {
	m.denied[d].get(metrics.retriesDenied, m.label, d.String()).Inc()
}

// lazyCounter is a counter child resolved on first use.
type lazyCounter struct {
	p atomic.Pointer[prometheus.Counter]
}

func (l *lazyCounter) get(vec *prometheus.CounterVec, labels ...string) prometheus.Counter {
	if c := l.p.Load(); c != nil {
		return *c
	}
	c := vec.WithLabelValues(labels...)
	l.p.CompareAndSwap(nil, &c)
	return *l.p.Load()
}

// lazyObserver is a histogram child resolved on first use.
type lazyObserver struct {
	p atomic.Pointer[prometheus.Observer]
}

func (l *lazyObserver) get(vec *prometheus.HistogramVec, labels ...string) prometheus.Observer {
	if o := l.p.Load(); o != nil {
		return *o
	}
	o := vec.WithLabelValues(labels...)
	l.p.CompareAndSwap(nil, &o)
	return *l.p.Load()
}

// retried counts a retry of a try that ended in o with status.
func (m *upstreamMetrics) retried(o Outcome, status int) {
	reason := o.String()
	if o == OutcomeOK || o == OutcomeUpstreamStatus {
		reason = strconv.Itoa(status)
	}
	c, ok := m.retries.Load(reason)
	if !ok {
		c, _ = m.retries.LoadOrStore(reason, metrics.retries.WithLabelValues(m.label, reason))
	}
	c.(prometheus.Counter).Inc()
}

// breakerStateValue is the breaker_state gauge's value for a state name.
func breakerStateValue(state string) float64 {
	switch state {
	case "half_open":
		return 1
	case "open":
		return 2
	}
	return 0
}

// breakerChanged counts a breaker's move to state to.
func breakerChanged(addr, to string) {
	metrics.once.Do(initMetrics)
	metrics.breakerChanges.WithLabelValues(upstreamLabel(addr), to).Inc()
}

// breakerStates is the breaker_state gauge. It is read from the breakers
// when scraped rather than set as they change, so that it says what the
// admin API says at that moment: an override in force counts, and a
// breaker whose open period ran out with no request since reads
// half-open (reading a breaker's state moves it on, and the move is
// logged and counted then). Every breaker has a sample from its first
// request on, and its series goes with it; an upstream no breaker has
// seen yet has one while an operator's override holds it. Breakers that
// share a label (several settings for one upstream, or upstreams past
// the label cap) show the worst of their states.
type breakerStates struct{ desc *prometheus.Desc }

// Describe implements prometheus.Collector.
func (c breakerStates) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c breakerStates) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	worst := map[string]float64{}
	note := func(addr, state string) {
		l, v := upstreamLabel(addr), breakerStateValue(state)
		if cur, ok := worst[l]; !ok || v > cur {
			worst[l] = v
		}
	}
	for _, b := range allBreakers() {
		note(b.upstream, b.state())
	}
	for _, o := range pendingOverrides(now) {
		if ov, _ := o.current(now); ov != nil {
			note(o.addr, overrideName(ov.mode))
		}
	}
	for l, v := range worst {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, l)
	}
}
