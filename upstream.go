package resilient

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// upstream is what the transport keeps per upstream (dial address):
// its connection slots, breaker, retry budget, rate limiter and metrics.
type upstream struct {
	addr      string
	addrValue any // addr, boxed once for the replacer
	slots     slots
	breaker   *breaker // nil when the breaker is off
	budget    *budget  // nil when retries or the budget are off
	limiter   *limiter // nil without rate_limit
	latency   *latency // times to response headers; nil unless hedged after a percentile
	m         *upstreamMetrics
	// log sampling of breaker_open, pool_timeout and rate_limited
	refusals [3]refusalLog

	busy atomic.Int32 // requests under way, carried exchanges included
	// keyed exchanges carried to the upstream's answer after their
	// client was answered, and how many may be at once
	carried    atomic.Int64
	carryLimit int64
	lastUsed   atomic.Int64 // unix nanos of the latest request, to the second
}

func newUpstream(t *Transport, addr string) *upstream {
	u := &upstream{addr: addr, addrValue: addr, slots: newSlots(t.Pool.MaxConns),
		m: newUpstreamMetrics(addr, t.Pool.MaxConns > 0, t.RateLimit != nil), carryLimit: defaultCarryLimit}
	if t.Pool.MaxConns > 0 {
		u.carryLimit = int64(t.Pool.MaxConns)
	}
	if t.RateLimit != nil {
		u.limiter = acquireLimiter(t.RateLimit, addr, t.fleetLink())
	}
	if !t.Breaker.Disabled {
		u.breaker = acquireBreaker(t.Breaker, addr, t.logger, t.fleetLink())
	}
	if t.Retry.Attempts > 1 {
		u.budget = newBudget(t.Retry.Budget)
	}
	if t.Hedge != nil && t.Hedge.quantile > 0 {
		u.latency = newLatency(time.Now)
	}
	return u
}

// takeSlot waits at most wait for a connection slot (see slots.acquire).
func (u *upstream) takeSlot(ctx context.Context, wait time.Duration) error {
	waited, err := u.slots.acquire(ctx, wait)
	if u.m.poolWait != nil {
		u.m.poolWait.Observe(waited.Seconds())
	}
	if err == nil {
		u.m.inFlight.Inc()
	}
	return err
}

// takeSlotNow takes a connection slot if one is free now.
func (u *upstream) takeSlotNow() bool {
	if !u.slots.tryAcquire() {
		return false
	}
	u.m.inFlight.Inc()
	return true
}

// freeSlot gives back a slot taken with takeSlot.
func (u *upstream) freeSlot() {
	u.slots.release()
	u.m.inFlight.Dec()
}

// release lets go of the shared breaker and limiter, and the label.
func (u *upstream) release() {
	u.m.release()
	if u.breaker != nil {
		u.breaker.release()
	}
	if u.limiter != nil {
		u.limiter.release()
	}
}

// begin notes a request to u at now; done must follow.
func (u *upstream) begin(now time.Time) {
	u.busy.Add(1)
	// to the second: a store per request would bounce the cache line
	// between cores for nothing
	if n := now.UnixNano(); n-u.lastUsed.Load() > int64(time.Second) {
		u.lastUsed.Store(n)
	}
}

// done notes that a request begun with begin is over.
func (u *upstream) done() { u.busy.Add(-1) }

// Per-upstream state is bounded: with dynamic upstreams
// (`reverse_proxy {http.request.host}:443`) every dial address ever seen
// would otherwise be kept until the next reload.
const (
	// idleTTL is how long the state of an upstream that gets no request
	// is kept.
	idleTTL = 10 * time.Minute
	// maxUpstreams bounds the upstreams one transport keeps state for;
	// past it, those idle the longest are dropped first.
	maxUpstreams = 1024
	// sweepEvery is how often idle upstreams are looked for.
	sweepEvery = time.Minute
)

// upstreamTable is a transport's per-upstream state, by dial address.
// Only upstreams with no request under way are dropped, so max_conns
// and the breaker's view of requests in flight hold.
type upstreamTable struct {
	t     *Transport
	m     sync.Map // dial address -> *upstream
	n     atomic.Int64
	clock func() time.Time

	mu      sync.Mutex // one sweep at a time; guards what follows
	timer   *time.Timer
	stopped bool
}

func newUpstreamTable(t *Transport) *upstreamTable {
	tb := &upstreamTable{t: t, clock: time.Now}
	tb.timer = time.AfterFunc(sweepEvery, tb.tick)
	return tb
}

// get returns the state of the upstream at addr, creating it on first use.
func (tb *upstreamTable) get(addr string) *upstream {
	if v, ok := tb.m.Load(addr); ok {
		return v.(*upstream)
	}
	u := newUpstream(tb.t, addr)
	u.lastUsed.Store(tb.clock().UnixNano())
	if v, loaded := tb.m.LoadOrStore(addr, u); loaded {
		u.release()
		return v.(*upstream)
	}
	if tb.n.Add(1) > maxUpstreams {
		tb.sweep(maxUpstreams * 3 / 4)
	}
	return u
}

func (tb *upstreamTable) tick() {
	tb.sweep(maxUpstreams)
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if !tb.stopped {
		tb.timer.Reset(sweepEvery)
	}
}

// sweep drops the upstreams idle for idleTTL, then, while more than
// keep remain, those idle the longest.
func (tb *upstreamTable) sweep(keep int) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	now := tb.clock().UnixNano()
	type idle struct {
		addr string
		u    *upstream
		last int64
	}
	var rest []idle
	tb.m.Range(func(k, v any) bool {
		u := v.(*upstream)
		if u.busy.Load() > 0 {
			return true
		}
		last := u.lastUsed.Load()
		if now-last > int64(idleTTL) {
			tb.drop(k.(string), u)
		} else {
			rest = append(rest, idle{k.(string), u, last})
		}
		return true
	})
	if excess := int(tb.n.Load()) - keep; excess > 0 {
		slices.SortFunc(rest, func(a, b idle) int { return int(a.last - b.last) })
		for _, e := range rest[:min(excess, len(rest))] {
			tb.drop(e.addr, e.u)
		}
	}
}

// drop lets go of the state of one upstream. Its breaker is kept a
// while only if it is not closed: a closed breaker of an idle upstream
// holds nothing worth keeping.
func (tb *upstreamTable) drop(addr string, u *upstream) {
	if !tb.m.CompareAndDelete(addr, u) {
		return
	}
	tb.n.Add(-1)
	u.m.release()
	switch b := u.breaker; {
	case b == nil:
	case b.state() == "closed":
		b.drop()
	default:
		b.release()
	}
	if u.limiter != nil {
		u.limiter.release()
	}
}

// close stops the sweeps and lets go of every upstream.
func (tb *upstreamTable) close() {
	tb.mu.Lock()
	tb.stopped = true
	tb.timer.Stop()
	tb.mu.Unlock()
	tb.m.Range(func(k, v any) bool {
		v.(*upstream).release()
		tb.m.Delete(k)
		return true
	})
	tb.n.Store(0)
}
