package fleet

import "github.com/prometheus/client_golang/prometheus"

// Operations counted in caddy_resilient_fleet_errors_total.
const (
	opPing      = "ping"      // heartbeat (the health check) failed
	opSubscribe = "subscribe" // subscribing, replaying or receiving failed
	opPublish   = "publish"   // writing or publishing a breaker state or override failed
	opDropped   = "dropped"   // a breaker state was dropped: the queue was full
	opReserve   = "reserve"   // a rate-limit reservation failed
	opPause     = "pause"     // a rate-limit pause failed
)

// The collectors exist once per process, whatever the number of fleets
// and configs, so that they can be registered into each config's
// registry.
var (
	errorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "fleet_errors_total",
		Help: "Redis operations of fleet mode that failed or timed out, by operation; the instance acted alone meanwhile.",
	}, []string{"op"})
	connectedGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "fleet_connected",
		Help: "1 while the fleet's Redis answers within the timeout, 0 while the instance acts alone.",
	}, []string{"redis", "prefix"})
	transitionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "resilient", Name: "fleet_transitions_total",
		Help: "Changes of the fleet connection, by the state changed to (connected or disconnected).",
	}, []string{"redis", "prefix", "to"})
)

// Collectors returns the fleet's Prometheus collectors, for the transport
// to register into Caddy's metrics registry on each provision (they are
// the same objects every time, so an AlreadyRegisteredError is harmless).
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{errorsTotal, connectedGauge, transitionsTotal}
}

// countError counts one failed operation.
func countError(op string) { errorsTotal.WithLabelValues(op).Inc() }
