package resilient

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// maxUpstreamLabels caps the distinct values of the `upstream` label;
// past it, new upstreams (dynamic ones, say) share the value "other".
const maxUpstreamLabels = 100

// durationBuckets suit calls to external APIs: 1ms to 30s.
var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// metrics are the transport's Prometheus collectors. They are created
// once per process and registered into each config's registry.
var metrics = struct {
	once           sync.Once
	requests       *prometheus.CounterVec
	attempts       *prometheus.CounterVec
	retries        *prometheus.CounterVec
	retriesDenied  *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	breakerState   *prometheus.GaugeVec
	breakerChanges *prometheus.CounterVec
	inFlight       *prometheus.GaugeVec
	poolWait       *prometheus.HistogramVec

	mu     sync.Mutex
	labels map[string]string // upstream address -> label value
}{labels: map[string]string{}}

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
	metrics.breakerState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "breaker_state",
		Help: "State of the upstream's circuit breaker: 0 closed, 1 half-open, 2 open.",
	}, up)
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
		Buckets: durationBuckets,
	}, up)
}

// registerMetrics registers the collectors into the config's registry;
// registering them again (several transports) is fine.
func registerMetrics(reg *prometheus.Registry) error {
	metrics.once.Do(initMetrics)
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		metrics.requests, metrics.attempts, metrics.retries, metrics.retriesDenied,
		metrics.duration, metrics.breakerState, metrics.breakerChanges,
		metrics.inFlight, metrics.poolWait,
	} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// upstreamLabel returns the label value for an upstream address, folding
// upstreams past the cap into "other".
func upstreamLabel(addr string) string {
	metrics.mu.Lock()
	defer metrics.mu.Unlock()
	if l, ok := metrics.labels[addr]; ok {
		return l
	}
	l := addr
	if len(metrics.labels) >= maxUpstreamLabels {
		l = "other"
	}
	metrics.labels[addr] = l
	return l
}

// upstreamMetrics holds the metric children of one upstream, resolved
// once so that recording on the request path does not allocate.
type upstreamMetrics struct {
	label    string
	requests [numOutcomes]prometheus.Counter
	attempts [numOutcomes]prometheus.Counter
	duration [numOutcomes]prometheus.Observer
	denied   [numDenials]prometheus.Counter
	retries  sync.Map // reason string -> prometheus.Counter
	inFlight prometheus.Gauge
	poolWait prometheus.Observer
}

func newUpstreamMetrics(addr string) *upstreamMetrics {
	metrics.once.Do(initMetrics)
	m := &upstreamMetrics{label: upstreamLabel(addr)}
	for o := Outcome(0); o < numOutcomes; o++ {
		m.requests[o] = metrics.requests.WithLabelValues(m.label, o.String())
		m.attempts[o] = metrics.attempts.WithLabelValues(m.label, o.String())
		m.duration[o] = metrics.duration.WithLabelValues(m.label, o.String())
	}
	for d := denyUnsafe; d < numDenials; d++ {
		m.denied[d] = metrics.retriesDenied.WithLabelValues(m.label, d.String())
	}
	m.inFlight = metrics.inFlight.WithLabelValues(m.label)
	m.poolWait = metrics.poolWait.WithLabelValues(m.label)
	return m
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

// breakerChanged records a breaker's move to state to.
func breakerChanged(addr, to string) {
	metrics.once.Do(initMetrics)
	l := upstreamLabel(addr)
	metrics.breakerState.WithLabelValues(l).Set(breakerStateValue(to))
	metrics.breakerChanges.WithLabelValues(l, to).Inc()
}
