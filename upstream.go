package resilient

import (
	"context"
	"time"
)

// upstream is what the transport keeps per upstream (dial address):
// its connection slots, breaker, retry budget and metrics.
type upstream struct {
	addr    string
	slots   slots
	breaker *breaker // nil when the breaker is off
	budget  *budget  // nil when retries or the budget are off
	m       *upstreamMetrics
	// log sampling of breaker_open, pool_timeout and rate_limited
	refusals [3]refusalLog
}

func newUpstream(t *Transport, addr string) *upstream {
	u := &upstream{addr: addr, slots: newSlots(t.Pool.MaxConns), m: newUpstreamMetrics(addr, t.Pool.MaxConns > 0)}
	if !t.Breaker.Disabled {
		u.breaker = acquireBreaker(t.Breaker, addr, t.logger)
	}
	if t.Retry.Attempts > 1 {
		u.budget = newBudget(t.Retry.Budget)
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

// freeSlot gives back a slot taken with takeSlot.
func (u *upstream) freeSlot() {
	u.slots.release()
	u.m.inFlight.Dec()
}

// release lets go of the shared breaker.
func (u *upstream) release() {
	if u.breaker != nil {
		u.breaker.release()
	}
}
