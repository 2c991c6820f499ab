// Package resilient provides the `resilient` transport for Caddy's
// reverse_proxy: Caddy's own HTTP transport with phase timeouts, bounded
// connection pools, idempotency-aware retries, a per-upstream circuit
// breaker and one typed outcome per request.
package resilient

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// defaultTLSTimeout applies when neither timeouts.tls nor the `transport
// http` option tls_timeout is set.
const defaultTLSTimeout = 5 * time.Second

// maxDuration stands for "no bound" where a zero would mean a default.
const maxDuration = 100 * 365 * 24 * time.Hour

func init() {
	caddy.RegisterModule(Transport{})
}

// Transport is Caddy's HTTP transport made resilient for calls to
// external APIs. It embeds reverseproxy.HTTPTransport, so every field
// of `transport http` works here unchanged, and adds per-upstream phase
// timeouts, a bounded connection pool, retries and a circuit breaker.
// Every proxied request ends in one typed outcome, reported through
// placeholders, one log entry and metrics.
type Transport struct {
	reverseproxy.HTTPTransport

	// Phase timeouts. Each phase that runs out ends the attempt with its
	// own outcome (connect_timeout, write_timeout, …). Default: see Timeouts.
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	// Connection pool limits per upstream. Default: see Pool.
	Pool *Pool `json:"pool,omitempty"`

	// Retry policy. Default: see Retry (retries are on, for idempotent
	// requests and for requests that never left).
	Retry *Retry `json:"retry,omitempty"`

	// Circuit breaker, one per upstream. Default: see Breaker (on).
	Breaker *Breaker `json:"breaker,omitempty"`

	// Outbound rate limit, one token bucket per upstream (and key).
	// Default: none; see RateLimit.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// Several gateways sharing what each learns, through Redis.
	// Default: none; see Fleet.
	Fleet *Fleet `json:"fleet,omitempty"`

	// Gateway-side Idempotency-Key records: one execution per key.
	// Default: none; see Idempotency.
	Idempotency *Idempotency `json:"idempotency,omitempty"`

	// Hedged requests: a second copy of a slow first attempt.
	// Default: none; see Hedge.
	Hedge *Hedge `json:"hedge,omitempty"`

	// The caller's deadline caps total, and travels upstream.
	// Default: none; see Deadline.
	Deadline *Deadline `json:"deadline,omitempty"`

	// The last good answer of each read, served when the upstream fails.
	// Default: none; see Fallback.
	Fallback *Fallback `json:"fallback,omitempty"`

	logger    *zap.Logger
	proxy     *reverseproxy.Handler // the reverse_proxy this transport is of; nil outside one
	upstreams *upstreamTable
	untraced  bool // HTTP/3: net/http/httptrace sees nothing, so nothing counts as never sent
	h2c       bool // cleartext connections speak HTTP/2
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.resilient",
		New: func() caddy.Module { return new(Transport) },
	}
}

// Provision applies the defaults, builds the underlying HTTP transport
// and wires the phase timeouts and pool settings into it.
func (t *Transport) Provision(ctx caddy.Context) error {
	t.logger = ctx.Logger()
	t.proxy = parentProxy(ctx)
	t.upstreams = newUpstreamTable(t)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if err := useEvents(ctx); err != nil {
		return fmt.Errorf("getting events app: %v", err)
	}
	if t.Timeouts == nil {
		t.Timeouts = new(Timeouts)
	}
	if t.Pool == nil {
		t.Pool = new(Pool)
	}
	if t.Retry == nil {
		t.Retry = new(Retry)
	}
	if t.Breaker == nil {
		t.Breaker = new(Breaker)
	}
	t.Timeouts.setDefaults()
	if err := t.Retry.provision(); err != nil {
		return fmt.Errorf("retry: %v", err)
	}
	if err := t.Breaker.provision(); err != nil {
		return fmt.Errorf("breaker: %v", err)
	}
	if t.RateLimit != nil {
		if err := t.RateLimit.provision(); err != nil {
			return fmt.Errorf("rate_limit: %v", err)
		}
	}
	if t.Fleet != nil {
		if err := t.Fleet.validate(); err != nil {
			return fmt.Errorf("fleet: %v", err)
		}
		if err := registerFleetMetrics(ctx.GetMetricsRegistry()); err != nil {
			return fmt.Errorf("registering fleet metrics: %v", err)
		}
		if err := t.Fleet.join(t.logger); err != nil {
			return fmt.Errorf("fleet: %v", err)
		}
	}
	if t.Hedge != nil {
		if err := t.Hedge.provision(); err != nil {
			return fmt.Errorf("hedge: %v", err)
		}
	}
	if t.Deadline != nil {
		if err := t.Deadline.provision(); err != nil {
			return fmt.Errorf("deadline: %v", err)
		}
	}
	if t.Idempotency != nil {
		if err := registerIdempotencyMetrics(ctx.GetMetricsRegistry()); err != nil {
			return fmt.Errorf("registering idempotency metrics: %v", err)
		}
		if err := t.Idempotency.provision(t.fleetLink()); err != nil {
			return fmt.Errorf("idempotency: %v", err)
		}
	}
	if t.Fallback != nil {
		if err := registerAll(ctx.GetMetricsRegistry(), fallbackGauges); err != nil {
			return fmt.Errorf("registering fallback metrics: %v", err)
		}
		if err := t.Fallback.provision(upstreamSet(t.proxy)); err != nil {
			return fmt.Errorf("fallback: %v", err)
		}
	}

	// Our connect and tls timeouts, and the pool's idle settings, feed the
	// embedded transport unless the same thing was set there explicitly
	// with a `transport http` option and not here.
	switch {
	case t.Timeouts.Connect > 0:
		t.DialTimeout = t.Timeouts.Connect
	case t.Timeouts.Connect < 0:
		// off: only the attempt and total bounds apply
		t.DialTimeout = caddy.Duration(maxDuration)
	}
	if t.KeepAlive == nil {
		t.KeepAlive = new(reverseproxy.KeepAlive)
	}
	ka := t.KeepAlive
	switch {
	case t.Pool.MaxIdle != 0:
		ka.MaxIdleConnsPerHost = t.Pool.MaxIdle
	case ka.MaxIdleConnsPerHost != 0:
		t.Pool.MaxIdle = ka.MaxIdleConnsPerHost
	}
	switch {
	case t.Pool.IdleTimeout != 0:
		ka.IdleConnTimeout = t.Pool.IdleTimeout
	case ka.IdleConnTimeout != 0:
		t.Pool.IdleTimeout = ka.IdleConnTimeout
	}
	t.Pool.setDefaults()
	if ka.MaxIdleConnsPerHost == 0 {
		ka.MaxIdleConnsPerHost = t.Pool.MaxIdle
	}
	if ka.IdleConnTimeout == 0 {
		ka.IdleConnTimeout = t.Pool.IdleTimeout
	}
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	t.untraced = slices.Contains(t.Versions, "3")
	t.h2c = slices.Contains(t.Versions, "h2c")
	rt := t.HTTPTransport.Transport
	switch {
	case t.Timeouts.TLS > 0:
		rt.TLSHandshakeTimeout = time.Duration(t.Timeouts.TLS)
	case t.Timeouts.TLS < 0:
		rt.TLSHandshakeTimeout = 0
	case rt.TLSHandshakeTimeout == 0:
		rt.TLSHandshakeTimeout = defaultTLSTimeout
	}
	dial := rt.DialContext
	rt.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newCountingConn(conn), nil
	}
	return nil
}

// Validate checks the configuration once Provision put the defaults in
// place.
func (t *Transport) Validate() error {
	if err := t.Timeouts.validate(); err != nil {
		return fmt.Errorf("timeouts: %v", err)
	}
	if err := t.Pool.validate(); err != nil {
		return fmt.Errorf("pool: %v", err)
	}
	if err := t.Retry.validate(); err != nil {
		return fmt.Errorf("retry: %v", err)
	}
	if err := t.Breaker.validate(); err != nil {
		return fmt.Errorf("breaker: %v", err)
	}
	if t.RateLimit != nil {
		if err := t.RateLimit.validate(); err != nil {
			return fmt.Errorf("rate_limit: %v", err)
		}
	}
	return nil
}

// Cleanup releases the breakers this configuration held and closes
// idle connections. It copes with a transport that failed half way
// through Provision.
func (t *Transport) Cleanup() error {
	if t.upstreams != nil {
		t.upstreams.close()
	}
	if t.Idempotency != nil {
		t.Idempotency.cleanup()
	}
	if t.Fallback != nil {
		t.Fallback.cleanup()
	}
	if t.Fleet != nil {
		t.Fleet.leave()
	}
	return t.HTTPTransport.Cleanup()
}

// RoundTrip sends req to its upstream under the configured policies.
// A usable upstream response, whatever its status, is returned as is;
// otherwise the error is a caddyhttp.HandlerError wrapping an *Error.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	// requests Caddy makes on its own, such as active health checks,
	// must see the upstream as it is
	if req.Context().Value(caddyhttp.ServerCtxKey) == nil {
		return t.HTTPTransport.RoundTrip(req)
	}
	ex := newExchange(t, req)
	if req.Header.Get("Upgrade") != "" {
		// upgrades (websockets) cannot be replayed and are long-lived:
		// no retries, no breaker, no buffering, but an outcome all the same
		return ex.upgrade()
	}
	return ex.run()
}

// parentProxy returns the reverse_proxy handler that provisions the
// transport, nil when there is none (a transport made in a test).
func parentProxy(ctx caddy.Context) *reverseproxy.Handler {
	mods := ctx.Modules()
	for i := len(mods) - 1; i >= 0; i-- {
		if h, ok := mods[i].(*reverseproxy.Handler); ok {
			return h
		}
	}
	return nil
}

// lbMovesOn reports whether Caddy's reverse_proxy would try the request
// of ex again, on another upstream, after it ended with an error
// (movable: nothing was sent, and the body is untouched): its lb_retries
// or lb_try_duration leave room, it has more than one upstream, and e is
// an error it moves (nothing sent, or a GET's). A fresh answer from a
// healthy upstream is worth more than a kept one (the fallback waits
// for it), and a request refused by an open breaker must end up at a
// healthy upstream (SPEC §4).
func (ex *exchange) lbMovesOn(movable bool) bool {
	lb := ex.lbRoom()
	if lb == nil {
		return false
	}
	// as Caddy's LoadBalancing.tryAgain (v2.11) decides for an error
	// that is no dial error: a GET's by default, else lb_retry_match's
	switch {
	case movable:
		return true
	case lb.RetryMatch == nil:
		return ex.req.Method == http.MethodGet
	}
	if ex.repl != nil {
		// what Caddy sets for the matchers it runs then
		ex.repl.Set("http.reverse_proxy.is_transport_error", true)
		defer ex.repl.Delete("http.reverse_proxy.is_transport_error")
	}
	match, err := lb.RetryMatch.AnyMatchWithError(ex.req)
	return err == nil && match
}

// lbRoom returns the load balancing of the request's reverse_proxy when
// its lb_retries or lb_try_duration leave room to try another of more
// than one upstream; nil otherwise.
func (ex *exchange) lbRoom() *reverseproxy.LoadBalancing {
	h := ex.t.proxy
	if h == nil || h.LoadBalancing == nil || (len(h.Upstreams) < 2 && h.DynamicUpstreamsRaw == nil) {
		return nil
	}
	lb := h.LoadBalancing
	switch {
	case lb.Retries == 0 && lb.TryDuration == 0:
		return nil
	case lb.Retries > 0 && ex.lbTry >= lb.Retries:
		return nil
	case lb.TryDuration > 0 && time.Since(ex.reqStart) >= time.Duration(lb.TryDuration):
		return nil
	}
	return lb
}

// lbMovesAnswer reports whether Caddy's lb_retries sends the request to
// another upstream after the answer res, as its reverse proxy (v2.11)
// does when a matcher set of lb_retry_match that reads the response
// ({rp.status_code}, {rp.header.*}) matches it: with the response's
// placeholders set as Caddy sets them.
func (ex *exchange) lbMovesAnswer(res *http.Response) bool {
	lb := ex.lbRoom()
	if lb == nil || len(lb.RetryMatch) == 0 || ex.repl == nil {
		return false
	}
	repl := ex.repl
	repl.DeleteByPrefix(rpHeaderPrefix)
	for field, value := range res.Header {
		repl.Set(rpHeaderPrefix+field, strings.Join(value, ","))
	}
	repl.Set("http.reverse_proxy.status_code", res.StatusCode)
	repl.Set("http.reverse_proxy.status_text", res.Status)
	for _, set := range lb.RetryMatch {
		if !readsResponse(set) {
			continue
		}
		match, err := set.MatchWithError(ex.req)
		if err != nil {
			return false
		}
		if match {
			return true
		}
	}
	return false
}

// rpHeaderPrefix names the upstream answer's headers among Caddy's
// placeholders.
const rpHeaderPrefix = "http.reverse_proxy.header."

// readsResponse reports whether a matcher set of lb_retry_match reads
// the upstream's answer, as Caddy tells (an expression naming one of
// its response placeholders, or one known only when it runs).
func readsResponse(set caddyhttp.MatcherSet) bool {
	for _, m := range set {
		expr, ok := m.(*caddyhttp.MatchExpression)
		if !ok {
			continue
		}
		for _, name := range expr.Placeholders() {
			switch {
			case name == "", strings.HasPrefix(name, rpHeaderPrefix),
				name == "http.reverse_proxy.status_code", name == "http.reverse_proxy.status_text",
				name == "http.reverse_proxy.upstream.latency", name == "http.reverse_proxy.upstream.latency_ms":
				return true
			}
		}
	}
	return false
}

// fleetLink returns the transport's fleet membership, nil without one.
func (t *Transport) fleetLink() *fleetLink {
	if t.Fleet == nil {
		return nil
	}
	return t.Fleet.link
}

// upstreamFor returns the state kept for the upstream req is going to.
func (t *Transport) upstreamFor(req *http.Request) *upstream {
	addr := req.URL.Host
	if di, ok := reverseproxy.GetDialInfo(req.Context()); ok {
		addr = di.Address
	}
	return t.upstreams.get(addr)
}

// Interface guards
var (
	_ caddy.Provisioner                                = (*Transport)(nil)
	_ caddy.Validator                                  = (*Transport)(nil)
	_ caddy.CleanerUpper                               = (*Transport)(nil)
	_ http.RoundTripper                                = (*Transport)(nil)
	_ reverseproxy.TLSTransport                        = (*Transport)(nil)
	_ reverseproxy.H2CTransport                        = (*Transport)(nil)
	_ reverseproxy.HealthCheckSchemeOverriderTransport = (*Transport)(nil)
	_ reverseproxy.ProxyProtocolTransport              = (*Transport)(nil)
	_ reverseproxy.RequestHeaderOpsTransport           = (*Transport)(nil)
)
