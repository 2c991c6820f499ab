package resilient

import (
	"time"

	"github.com/sony/gobreaker/v2"
)

// How long a breaker stays open.
//
// The first time it opens, for open_for. A probe that fails opens it
// again for twice its latest period, up to open_for_max: a provider that
// stays down is probed less and less often, while a short outage ends
// after a short period. Once the breaker has stayed closed for a window,
// the next trip opens it for open_for again; a trip sooner than that
// (the provider still flapping) opens it for its latest period. An
// operator's reset starts it over.
//
// gobreaker's Timeout is fixed per gobreaker, and the period is not: so
// gobreaker's is the shortest period, open_for, and the breaker holds
// the open state itself until openUntil, asking gobreaker nothing before
// then (heldOpen). The first question after it, gobreaker half-opens, and
// its hook runs as it always did. Should a question slip in between (a
// race with the trip), gobreaker's own Timeout still keeps it open for
// open_for. The healthy path takes no lock: a closed breaker admits from
// cbState alone, as before.

// nextOpenFor returns the period of the open state the breaker moves to
// now, from the state from. It runs in gobreaker's hook, under its lock.
func (b *breaker) nextOpenFor(from gobreaker.State, now time.Time) time.Duration {
	first, longest := time.Duration(b.cfg.OpenFor), time.Duration(b.cfg.OpenForMax)
	latest := time.Duration(b.openFor.Load())
	switch closed := b.closedAt.Load(); {
	case latest == 0:
		return first
	case from == gobreaker.StateHalfOpen:
		return doubled(latest, longest)
	case closed != 0 && now.UnixNano()-closed >= int64(b.cfg.Window):
		return first
	}
	return latest
}

// doubled is twice d, at most longest (and never past what a Duration
// holds).
func doubled(d, longest time.Duration) time.Duration {
	if d > longest/2 {
		return longest
	}
	return 2 * d
}

// heldOpen reports whether the breaker is open on its own at now: it
// tripped, and its open period has not run out. gobreaker must not be
// asked then, or it would half-open after open_for whatever the period.
func (b *breaker) heldOpen(now time.Time) bool {
	return gobreaker.State(b.cbState.Load()) == gobreaker.StateOpen && now.UnixNano() < b.openUntil.Load()
}

// own returns the breaker's own state, overrides and the fleet aside;
// an open breaker whose period ran out moves on to half-open.
func (b *breaker) own() gobreaker.State {
	switch s := gobreaker.State(b.cbState.Load()); {
	case s == gobreaker.StateClosed:
		// only a failure reported through gobreaker moves it on, and
		// that updates cbState: no need to take gobreaker's lock, nor
		// to read the clock
		return s
	case b.heldOpen(b.now()):
		return gobreaker.StateOpen
	}
	return b.cur.Load().cb.State()
}

// openPeriod is the length of the breaker's latest open period: the one
// it is in when open, the one that just ended when half-open; 0 when
// closed.
func (b *breaker) openPeriod(own gobreaker.State) time.Duration {
	if own == gobreaker.StateClosed {
		return 0
	}
	return time.Duration(b.openFor.Load())
}
