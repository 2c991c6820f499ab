package resilient

import (
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// openClock is a fake clock for a breaker's open periods.
//
// gobreaker keeps real time: it half-opens no sooner than open_for after
// a trip, whatever the breaker's clock says (see openperiod.go). So each
// move of the clock also sleeps, for real, as long as it moves or
// open_for (a little more), whichever is shorter: once the clock has
// moved past an open period, real time has passed open_for too. The
// tests keep open_for at a millisecond, and every comparison is on the
// fake clock, exactly.
type openClock struct {
	t     atomic.Int64
	first time.Duration
}

func (c *openClock) now() time.Time { return time.Unix(0, c.t.Load()) }

func (c *openClock) advance(d time.Duration) {
	c.t.Add(int64(d))
	time.Sleep(min(d, c.first) + time.Microsecond)
}

// breakerClocked returns a breaker outside the registry that trips on
// one failure, never on the ratio, with the open periods and window
// set, on a fake clock.
func breakerClocked(t *testing.T, set func(*Breaker)) (*breaker, *openClock) {
	t.Helper()
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(1)
		c.MinRequests = maxCount
		set(c)
	})
	clock := &openClock{first: time.Duration(b.cfg.OpenFor)}
	clock.t.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	b.now = clock.now
	b.win.clock = clock.now
	return b, clock
}

// openExpect checks that b is open on its own for exactly period from
// now on: the admin API's open_period and open_until, and the wait a
// refused request is given (its Retry-After), all say so.
func openExpect(t *testing.T, b *breaker, clock *openClock, period time.Duration) {
	t.Helper()
	now := clock.now()
	s := b.status(now)
	if s.State != "open" || s.OpenPeriod != period.String() || s.OpenUntil == nil || !s.OpenUntil.Equal(now.Add(period)) {
		t.Fatalf("status %s, open_period %q, open_until %v; want open for %v, until %v", s.State, s.OpenPeriod, s.OpenUntil, period, now.Add(period))
	}
	if _, wait, ok := b.allow(nil); ok || wait != period {
		t.Fatalf("allowed %v, wait %v; want refused for %v", ok, wait, period)
	}
}

// openAfter waits out the open period of b (it must be open for
// period), checking that it is open to its last instant.
func openAfter(t *testing.T, b *breaker, clock *openClock, period time.Duration) {
	t.Helper()
	clock.advance(period - time.Nanosecond)
	breakerExpectState(t, b, "open")
	clock.advance(time.Nanosecond)
	breakerExpectState(t, b, "half_open")
}

func TestBreakerFirstOpenPeriodIsOpenFor(t *testing.T) {
	b, clock := breakerClocked(t, func(c *Breaker) {
		c.OpenFor = caddy.Duration(time.Millisecond)
		c.OpenForMax = caddy.Duration(8 * time.Millisecond)
	})
	breakerSend(t, b, true)
	openExpect(t, b, clock, time.Millisecond)
	openAfter(t, b, clock, time.Millisecond)
	if s := b.status(clock.now()); s.State != "half_open" || s.OpenPeriod != "1ms" || s.OpenUntil != nil {
		t.Errorf("half-open status: %+v; want the period that ended, no open_until", s)
	}
}

func TestBreakerOpenPeriodDoublesOnEachFailedProbeUpToTheLongest(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	b, clock := breakerClocked(t, func(c *Breaker) {
		c.OpenFor = caddy.Duration(time.Millisecond)
		c.OpenForMax = caddy.Duration(5 * time.Millisecond)
	})
	b.logger.Store(zap.New(core))
	breakerSend(t, b, true)
	want := []time.Duration{1, 2, 4, 5, 5} // ms: doubled, then held at open_for_max
	for i, p := range want {
		period := p * time.Millisecond
		openExpect(t, b, clock, period)
		openAfter(t, b, clock, period)
		if i < len(want)-1 {
			breakerSend(t, b, true) // the probe fails: open again
		}
	}
	var got []time.Duration
	for _, e := range logs.FilterMessage("breaker state changed").All() {
		if m := e.ContextMap(); m["to"] == "open" {
			got = append(got, m["open_for"].(time.Duration))
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries for a change to open, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Errorf("entry %d logs open_for %v, want %v", i+1, got[i], want[i]*time.Millisecond)
		}
	}
}

func TestBreakerOpenPeriodStartsOverOnceClosedForAWindow(t *testing.T) {
	b, clock := breakerClocked(t, func(c *Breaker) {
		c.OpenFor = caddy.Duration(time.Millisecond)
		c.OpenForMax = caddy.Duration(30 * time.Millisecond)
		c.Window = caddy.Duration(10 * time.Millisecond)
		c.HalfOpenRequests = 1
	})
	// up to 4ms: a trip and two failed probes
	breakerSend(t, b, true)
	for _, p := range []time.Duration{1, 2} {
		openAfter(t, b, clock, p*time.Millisecond)
		breakerSend(t, b, true)
	}
	openExpect(t, b, clock, 4*time.Millisecond)
	openAfter(t, b, clock, 4*time.Millisecond)
	breakerSend(t, b, false) // the probe succeeds
	breakerExpectState(t, b, "closed")

	// tripped again within a window of closing: the upstream is still
	// flapping, and it keeps its latest period
	clock.advance(10*time.Millisecond - time.Nanosecond)
	breakerSend(t, b, true)
	openExpect(t, b, clock, 4*time.Millisecond)
	openAfter(t, b, clock, 4*time.Millisecond)
	breakerSend(t, b, false)

	// closed for a whole window: the next trip opens it for open_for
	clock.advance(10 * time.Millisecond)
	breakerSend(t, b, true)
	openExpect(t, b, clock, time.Millisecond)
}

func TestBreakerOpenPeriodWithOneValueIsFixed(t *testing.T) {
	cfg := breakerConfig(t, func(c *Breaker) { c.OpenFor = caddy.Duration(5 * time.Second) })
	if cfg.OpenForMax != cfg.OpenFor {
		t.Fatalf("open_for 5s alone: open_for_max %v, want 5s", time.Duration(cfg.OpenForMax))
	}
	b, clock := breakerClocked(t, func(c *Breaker) { c.OpenFor = caddy.Duration(time.Millisecond) })
	breakerSend(t, b, true)
	for range 4 {
		openExpect(t, b, clock, time.Millisecond)
		openAfter(t, b, clock, time.Millisecond)
		breakerSend(t, b, true)
	}
	openExpect(t, b, clock, time.Millisecond)
}

func TestBreakerResetStartsTheOpenPeriodOver(t *testing.T) {
	b, clock := breakerClocked(t, func(c *Breaker) {
		c.OpenFor = caddy.Duration(time.Millisecond)
		c.OpenForMax = caddy.Duration(8 * time.Millisecond)
	})
	breakerSend(t, b, true)
	openAfter(t, b, clock, time.Millisecond)
	breakerSend(t, b, true)
	openExpect(t, b, clock, 2*time.Millisecond)
	b.reset(b.state()) // the operator's
	breakerSend(t, b, true)
	openExpect(t, b, clock, time.Millisecond)
}

func TestBreakerOpenPeriodDefaults(t *testing.T) {
	for _, tc := range []struct {
		name           string
		first, longest time.Duration // as configured
		wantFirst      time.Duration
		wantLongest    time.Duration
	}{
		{"nothing written", 0, 0, time.Second, 30 * time.Second},
		{"open_for alone is fixed", 5 * time.Second, 0, 5 * time.Second, 5 * time.Second},
		{"open_for_max alone", 0, time.Minute, time.Second, time.Minute},
		{"open_for_max alone, below the default first", 0, 500 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond},
		{"both", 2 * time.Second, time.Minute, 2 * time.Second, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := breakerConfig(t, func(c *Breaker) {
				c.OpenFor, c.OpenForMax = caddy.Duration(tc.first), caddy.Duration(tc.longest)
			})
			if time.Duration(cfg.OpenFor) != tc.wantFirst || time.Duration(cfg.OpenForMax) != tc.wantLongest {
				t.Errorf("open_for %v, open_for_max %v; want %v, %v", time.Duration(cfg.OpenFor), time.Duration(cfg.OpenForMax), tc.wantFirst, tc.wantLongest)
			}
		})
	}
	// the key tells breakers apart by their longest period too, so a
	// reload that changes it starts a fresh breaker
	a := breakerConfig(t, func(c *Breaker) { c.OpenForMax = caddy.Duration(time.Minute) })
	if a.key() == breakerConfig(t, nil).key() {
		t.Error("open_for_max 1m and 30s share a registry key")
	}
}

func TestDoubledNeverOverflows(t *testing.T) {
	longest := time.Duration(1<<63 - 1)
	if got := doubled(longest/2+1, longest); got != longest {
		t.Errorf("doubled(%v) = %v, want the longest", longest/2+1, got)
	}
	if got := doubled(3*time.Second, 5*time.Second); got != 5*time.Second {
		t.Errorf("doubled(3s) up to 5s = %v", got)
	}
	if got := doubled(2*time.Second, 5*time.Second); got != 4*time.Second {
		t.Errorf("doubled(2s) up to 5s = %v", got)
	}
}

// openModel is the open-period contract, written out plainly: a trip
// opens the breaker for open_for, a failed probe for twice its latest
// period up to open_for_max, and a trip after a window of being closed
// for open_for again. Any failure while closed trips it (the tests'
// breakers trip on one); half_open_requests successes close it.
type openModel struct {
	first, longest, window time.Duration
	probes                 int

	state    string
	period   time.Duration // latest; 0: never opened
	until    time.Time
	closedAt time.Time // zero: never closed after probes
	ok       int       // successful probes so far

	// what the sequence exercised, so that the test can tell it did
	doubled, capped, startedOver, kept int
}

// at moves the model on to now: an open period that ran out half-opens.
func (m *openModel) at(now time.Time) {
	if m.state == "open" && !now.Before(m.until) {
		m.state, m.ok = "half_open", 0
	}
}

// request is one request at now; it returns whether it was let
// through, and if not, the wait it was given.
func (m *openModel) request(now time.Time, failure bool) (bool, time.Duration) {
	m.at(now)
	switch m.state {
	case "open":
		return false, m.until.Sub(now)
	case "closed":
		if failure {
			m.open(now, false)
		}
	case "half_open":
		if failure {
			m.open(now, true)
		} else if m.ok++; m.ok == m.probes {
			m.state, m.closedAt = "closed", now
		}
	}
	return true, 0
}

func (m *openModel) open(now time.Time, failedProbe bool) {
	switch {
	case m.period == 0:
		m.period = m.first
	case failedProbe:
		if 2*m.period > m.longest {
			m.period = m.longest
			m.capped++
		} else {
			m.period *= 2
			m.doubled++
		}
	case !m.closedAt.IsZero() && now.Sub(m.closedAt) >= m.window:
		m.period = m.first
		m.startedOver++
	default:
		m.kept++
	}
	m.state, m.until = "open", now.Add(m.period)
}

// A breaker driven through a long random sequence of successes,
// failures and pauses (fixed seed) opens for the periods the plain model
// says, to the nanosecond, and says so everywhere: its state, the
// admin API's open_until and open_period, and a refused request's wait.
func TestBreakerOpenPeriodsMatchTheModel(t *testing.T) {
	const (
		first   = time.Millisecond
		longest = 6 * time.Millisecond // 1, 2, 4, then capped at 6
		window  = 5 * time.Millisecond
		probes  = 2
		steps   = 1500
	)
	b, clock := breakerClocked(t, func(c *Breaker) {
		c.OpenFor, c.OpenForMax = caddy.Duration(first), caddy.Duration(longest)
		c.Window = caddy.Duration(window)
		c.HalfOpenRequests = probes
	})
	m := &openModel{first: first, longest: longest, window: window, probes: probes, state: "closed"}
	// pauses around every boundary the contract has: within and past an
	// open period, exactly a window, just short of one
	pauses := []time.Duration{0, 1, 100 * time.Microsecond, 999 * time.Microsecond, first, 2 * first,
		3 * first, window - 1, window, window + first, longest, 9 * first}
	rng := rand.New(rand.NewPCG(2026, 12))
	for i := range steps {
		switch r := rng.IntN(10); {
		case r < 4:
			d := pauses[rng.IntN(len(pauses))]
			clock.advance(d)
			m.at(clock.now())
		default:
			failure := r < 7
			now := clock.now()
			wantOK, wantWait := m.request(now, failure)
			tk, wait, ok := b.allow(nil)
			if ok != wantOK || wait != wantWait {
				t.Fatalf("step %d: request (failure %v) allowed %v wait %v; the model: %v %v (model %+v)", i, failure, ok, wait, wantOK, wantWait, *m)
			}
			if ok {
				tk.report(failure, false)
				if !failure {
					tk.settle()
				}
			}
		}
		now := clock.now()
		s := b.status(now)
		if s.State != m.state {
			t.Fatalf("step %d: state %s, the model %s (model %+v)", i, s.State, m.state, *m)
		}
		switch {
		case m.state == "open" && (s.OpenUntil == nil || !s.OpenUntil.Equal(m.until) || s.OpenPeriod != m.period.String()):
			t.Fatalf("step %d: open until %v for %s; the model: until %v for %v", i, s.OpenUntil, s.OpenPeriod, m.until, m.period)
		case m.state == "half_open" && s.OpenPeriod != m.period.String():
			t.Fatalf("step %d: half-open after %s; the model: after %v", i, s.OpenPeriod, m.period)
		}
	}
	t.Logf("%d steps: %d doublings, %d capped, %d started over after a closed window, %d kept within one", steps, m.doubled, m.capped, m.startedOver, m.kept)
	if m.doubled < 5 || m.capped < 5 || m.startedOver < 5 || m.kept < 5 {
		t.Errorf("the sequence did not exercise every rule enough: %+v", *m)
	}
}
