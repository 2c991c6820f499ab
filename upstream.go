package resilient

import "sync/atomic"

// upstream is what the transport keeps per upstream (dial address):
// its connection slots, breaker and retry budget.
type upstream struct {
	addr    string
	slots   slots
	breaker *breaker // nil when the breaker is off
	budget  *budget  // nil when retries or the budget are off

	// retries refused, by reason
	denied [numDenials]atomic.Int64
}

func newUpstream(t *Transport, addr string) *upstream {
	u := &upstream{addr: addr, slots: newSlots(t.Pool.MaxConns)}
	if !t.Breaker.Disabled {
		u.breaker = acquireBreaker(t.Breaker, addr, t.logger)
	}
	if t.Retry.Attempts > 1 {
		u.budget = newBudget(t.Retry.Budget)
	}
	return u
}

// release lets go of the shared breaker.
func (u *upstream) release() {
	if u.breaker != nil {
		u.breaker.release()
	}
}
