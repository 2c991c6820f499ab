package resilient

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }

// windowBreaker returns a breaker outside the registry whose window
// runs on a fake clock.
func windowBreaker(t *testing.T, set func(*Breaker)) (*breaker, *fakeClock) {
	t.Helper()
	b := breakerFor(t, set)
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	b.win.clock = clock.Now
	return b, clock
}

func TestWindowBusyUpstreamWithBackgroundErrorsNeverTrips(t *testing.T) {
	b, clock := windowBreaker(t, nil) // the defaults: ratio 0.5, min 20, 5 in a row, 10s
	rng := rand.New(rand.NewPCG(1, 2))
	// 1000 results a second for 20 minutes, 10% of them failures: a run
	// of five failures in a row comes about once every 100,000 results
	runs := 0
	streak := 0
	for i := 0; i < 1_200_000; i++ {
		clock.Advance(time.Millisecond)
		failure := rng.Float64() < 0.1
		if failure {
			streak++
			if streak == 5 {
				runs++
			}
		} else {
			streak = 0
		}
		tk, _, ok := b.allow(nil)
		if !ok {
			t.Fatalf("result %d: the breaker refused a busy upstream with 10%% errors (state %s)", i, b.state())
		}
		tk.report(failure, false)
		if !failure {
			tk.settle()
		}
	}
	if runs < 5 {
		t.Fatalf("only %d runs of five failures: the test did not exercise the rule", runs)
	}
	breakerExpectState(t, b, "closed")
}

func TestWindowQuietUpstreamTripsOnFiveFailuresInARow(t *testing.T) {
	b, clock := windowBreaker(t, nil)
	breakerSend(t, b, false)
	for i := 0; i < 5; i++ {
		clock.Advance(time.Second) // one request a second: never 20 in the window
		breakerExpectState(t, b, "closed")
		breakerSend(t, b, true) // a refused connection, say
	}
	breakerExpectState(t, b, "open")
}

func TestWindowRatioDecidesOnceTheWindowHoldsMinRequests(t *testing.T) {
	b, clock := windowBreaker(t, func(c *Breaker) { c.MinRequests = 10 })
	for i := 0; i < 10; i++ {
		breakerSend(t, b, false)
	}
	// ten successes in the window: six failures in a row are 6 of 16,
	// under the ratio, so the run does not trip it
	for i := 0; i < 6; i++ {
		clock.Advance(10 * time.Millisecond)
		breakerSend(t, b, true)
	}
	breakerExpectState(t, b, "closed")
	// four more: 10 of 20 failed, the ratio
	for i := 0; i < 4; i++ {
		breakerSend(t, b, true)
	}
	breakerExpectState(t, b, "open")
}

func TestWindowOldResultsLeaveIt(t *testing.T) {
	b, clock := windowBreaker(t, func(c *Breaker) { c.MinRequests = 4 })
	for i := 0; i < 4; i++ {
		breakerSend(t, b, false)
	}
	clock.Advance(11 * time.Second) // the successes are out of the window
	c := b.win.counts()
	if c.results() != 0 {
		t.Fatalf("window holds %d results after it rolled past them", c.results())
	}
	for i := 0; i < 3; i++ {
		breakerSend(t, b, true) // 3 of 3 once the window is empty: min_requests not reached
	}
	breakerExpectState(t, b, "closed")
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")
}

func TestWindowRunOfFailuresExpiresWithTheWindow(t *testing.T) {
	b, clock := windowBreaker(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(3) })
	breakerSend(t, b, true)
	breakerSend(t, b, true)
	clock.Advance(11 * time.Second)
	breakerSend(t, b, true) // the first two are out of the window
	breakerExpectState(t, b, "closed")
	breakerSend(t, b, true)
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")
}

func TestWindowSlowFailureCountsHoweverLongItTook(t *testing.T) {
	// an attempt as long as the window: admitted at the start, its
	// result comes a whole window later
	b, clock := windowBreaker(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(2)
		c.Window = caddy.Duration(10 * time.Second)
	})
	var hung []*ticket
	for i := 0; i < 2; i++ {
		tk, _, ok := b.allow(nil)
		if !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
		hung = append(hung, tk)
	}
	clock.Advance(15 * time.Second) // the attempts hang 15s; the window is 10s
	for _, tk := range hung {
		tk.report(true, false) // attempt_timeout
	}
	breakerExpectState(t, b, "open")
}

func TestWindowLateFailureOfACutBodyCounts(t *testing.T) {
	b, _ := windowBreaker(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(2) })
	for i := 0; i < 2; i++ {
		tk, _, _ := b.allow(nil)
		tk.report(false, false) // headers were fine
		breakerExpectState(t, b, "closed")
		tk.lateFailure() // then the body was cut short
	}
	breakerExpectState(t, b, "open")
	if c := b.tripCounts.Load(); c == nil || c.failures != 2 || c.successes != 0 {
		t.Fatalf("trip counts %+v: the cut answers should count as failures, not successes", c)
	}
}

func TestWindowResultsFromBeforeAStateChangeAreDropped(t *testing.T) {
	b, _ := windowBreaker(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(1) })
	old, _, _ := b.allow(nil)
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")
	b.reset(b.state())
	old.report(true, false) // let through before the breaker opened
	if c := b.win.counts(); c.results() != 0 {
		t.Fatalf("window after reset holds %+v", c)
	}
	breakerExpectState(t, b, "closed")
}
