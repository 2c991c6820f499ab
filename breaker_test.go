package resilient

import (
	"github.com/prometheus/client_golang/prometheus/testutil"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// breakerConfig returns provisioned, valid settings: the defaults
// changed by set.
func breakerConfig(t *testing.T, set func(*Breaker)) *Breaker {
	t.Helper()
	cfg := new(Breaker)
	if set != nil {
		set(cfg)
	}
	if err := cfg.provision(); err != nil {
		t.Fatal(err)
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func breakerInt(n int) *int { return &n }

// breakerForce gives b's upstream an override, as the admin API does.
func breakerForce(t *testing.T, b *breaker, mode forceMode, d time.Duration) {
	t.Helper()
	from := b.state()
	if _, ok := setOverride(b.upstream, mode, d); !ok {
		t.Fatal("override refused")
	}
	t.Cleanup(func() { clearOverride(b.upstream) })
	b.forced(from, mode, d)
}

// breakerFor returns a breaker outside the registry.
func breakerFor(t *testing.T, set func(*Breaker)) *breaker {
	t.Helper()
	// an address of its own: overrides are kept per address, for the
	// whole process
	return newBreaker(breakerConfig(t, set), t.Name()+".test:443", t.Name())
}

// breakerSend lets one request through b and reports it, as the
// transport does: a success is settled once its answer is over.
func breakerSend(t *testing.T, b *breaker, failure bool) {
	t.Helper()
	tk, _, ok := b.allow(nil)
	if !ok {
		t.Fatalf("request rejected; breaker %s", b.state())
	}
	tk.report(failure, false)
	if !failure {
		tk.settle()
	}
}

func breakerExpectState(t *testing.T, b *breaker, want string) {
	t.Helper()
	if got := b.state(); got != want {
		t.Fatalf("state %s, want %s", got, want)
	}
}

// breakerTripped returns a breaker opened by one failure, open for
// openFor, with halfOpen probes.
func breakerTripped(t *testing.T, openFor time.Duration, halfOpen int) *breaker {
	t.Helper()
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(1)
		c.OpenFor = caddy.Duration(openFor)
		c.HalfOpenRequests = halfOpen
	})
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")
	return b
}

// breakerWaitHalfOpen waits for a tripped breaker to let probes through.
func breakerWaitHalfOpen(t *testing.T, b *breaker) {
	t.Helper()
	time.Sleep(b.openLeft(time.Now()) + 5*time.Millisecond)
	breakerExpectState(t, b, "half_open")
}

func TestBreakerTripsOnFailureRatio(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(0)
		c.MinRequests = 5
		c.FailureRatio = 0.6
	})
	for _, failure := range []bool{true, true, true, false} {
		breakerSend(t, b, failure)
	}
	breakerExpectState(t, b, "closed") // 3 of 4: too few requests
	breakerSend(t, b, false)
	breakerExpectState(t, b, "closed") // 3 of 5 failed, but only a failure trips
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open") // 4 of 6
}

func TestBreakerRatioBelowThresholdStaysClosed(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(0)
		c.MinRequests = 4
	})
	for i := 0; i < 40; i++ {
		breakerSend(t, b, i%3 == 2) // a third fail
	}
	breakerExpectState(t, b, "closed")
}

func TestBreakerTripsOnConsecutiveFailures(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(3)
		c.MinRequests = 100
	})
	breakerSend(t, b, true)
	breakerSend(t, b, true)
	breakerSend(t, b, false) // breaks the run
	breakerSend(t, b, true)
	breakerSend(t, b, true)
	breakerExpectState(t, b, "closed")
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")
}

func TestBreakerConsecutiveFailuresZeroDisablesTheRule(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(0)
		c.MinRequests = 100
	})
	for i := 0; i < 50; i++ {
		breakerSend(t, b, true)
	}
	breakerExpectState(t, b, "closed")
}

func TestBreakerExcludedResultsCountNeitherWay(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(2) })
	breakerSend(t, b, true)
	for i := 0; i < 10; i++ {
		tk, _, _ := b.allow(nil)
		tk.report(false, true)
	}
	breakerSend(t, b, true) // still a run of two
	breakerExpectState(t, b, "open")
}

func TestBreakerIsFailure(t *testing.T) {
	cfg := breakerConfig(t, func(c *Breaker) { c.SlowCall = caddy.Duration(100 * time.Millisecond) })
	fast, slow := 10*time.Millisecond, 200*time.Millisecond
	for _, tc := range []struct {
		outcome           Outcome
		status            int
		took              time.Duration
		failure, excluded bool
	}{
		{OutcomeOK, 200, fast, false, false},
		{OutcomeOK, 200, slow, true, false},
		{OutcomeOK, 404, fast, false, false},
		{OutcomeUpstreamStatus, 503, fast, true, false},
		{OutcomeUpstreamStatus, 500, fast, true, false},
		{OutcomeConnectError, 0, fast, true, false},
		{OutcomeConnectTimeout, 0, fast, true, false},
		{OutcomeTLSError, 0, fast, true, false},
		{OutcomeReset, 0, fast, true, false},
		{OutcomeReadTimeout, 0, slow, true, false},
		{OutcomeAttemptTimeout, 0, slow, true, false},
		{OutcomeCanceled, 0, slow, false, true},
		{OutcomePoolTimeout, 0, slow, false, true},
		{OutcomeBreakerOpen, 0, fast, false, true},
	} {
		failure, excluded := cfg.isFailure(tc.outcome, tc.status, tc.took)
		if failure != tc.failure || excluded != tc.excluded {
			t.Errorf("%s %d in %v: failure %v excluded %v, want %v %v",
				tc.outcome, tc.status, tc.took, failure, excluded, tc.failure, tc.excluded)
		}
	}
	off := breakerConfig(t, nil)
	if failure, _ := off.isFailure(OutcomeOK, 200, time.Hour); failure {
		t.Error("slow_call 0 must not count slow responses")
	}
}

func TestBreakerOpenRejectsWithTimeUntilHalfOpen(t *testing.T) {
	b := breakerTripped(t, 3*time.Second, 1)
	tk, wait, ok := b.allow(nil)
	if ok || tk != nil {
		t.Fatal("an open breaker let a request through")
	}
	if wait <= 2900*time.Millisecond || wait > 3*time.Second {
		t.Errorf("wait %v, want just under the 3s open_for", wait)
	}
	if s := retryAfterSeconds(wait); s != "3" {
		t.Errorf("retry_after %s, want 3", s)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                       "1",
		time.Nanosecond:         "1",
		time.Second:             "1",
		time.Second + 1:         "2",
		9500 * time.Millisecond: "10",
	} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%v) = %s, want %s", d, got, want)
		}
	}
}

func TestBreakerHalfOpenLimitsProbesAndClosesAfterThatManySuccesses(t *testing.T) {
	b := breakerTripped(t, 40*time.Millisecond, 2)
	breakerWaitHalfOpen(t, b)
	p1, _, ok1 := b.allow(nil)
	p2, _, ok2 := b.allow(nil)
	if !ok1 || !ok2 {
		t.Fatal("half-open breaker refused its probes")
	}
	if _, wait, ok := b.allow(nil); ok || wait != time.Second {
		t.Fatalf("third request: allowed %v, wait %v; want refused, retry in 1s", ok, wait)
	}
	if !b.rejects() {
		t.Error("rejects() = false with all probes in flight")
	}
	p1.report(false, false)
	p1.report(false, false) // a ticket counts once
	breakerExpectState(t, b, "half_open")
	p2.report(false, false)
	breakerExpectState(t, b, "closed")
	breakerSend(t, b, false)
}

func TestBreakerHalfOpenFailureReopens(t *testing.T) {
	b := breakerTripped(t, 40*time.Millisecond, 3)
	breakerWaitHalfOpen(t, b)
	breakerSend(t, b, false)
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")
	if _, wait, ok := b.allow(nil); ok || wait <= 0 || wait > 40*time.Millisecond {
		t.Errorf("after a failed probe: allowed %v, wait %v; want refused for the rest of open_for", ok, wait)
	}
}

func TestBreakerCanceledProbeFreesItsSlot(t *testing.T) {
	b := breakerTripped(t, 40*time.Millisecond, 1)
	breakerWaitHalfOpen(t, b)
	p, _, _ := b.allow(nil)
	if _, _, ok := b.allow(nil); ok {
		t.Fatal("second probe let through with half_open_requests 1")
	}
	p.report(false, true) // the client went away
	breakerSend(t, b, false)
	breakerExpectState(t, b, "closed")
}

func TestBreakerLostProbeIsReclaimed(t *testing.T) {
	b := breakerTripped(t, 40*time.Millisecond, 1)
	breakerWaitHalfOpen(t, b)
	func() {
		if _, _, ok := b.allow(nil); !ok {
			t.Fatal("probe refused")
		}
		// its ticket is dropped without a call
	}()
	deadline := time.Now().Add(2 * time.Second)
	for b.rejects() {
		if time.Now().After(deadline) {
			t.Fatal("a lost probe kept the half-open breaker from letting others through")
		}
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	breakerSend(t, b, false)
	breakerExpectState(t, b, "closed")
}

func TestBreakerRejects(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(1)
		c.OpenFor = caddy.Duration(40 * time.Millisecond)
		c.HalfOpenRequests = 1
	})
	if b.rejects() {
		t.Error("closed breaker rejects")
	}
	breakerSend(t, b, true)
	if !b.rejects() {
		t.Error("open breaker does not reject")
	}
	breakerWaitHalfOpen(t, b)
	if b.rejects() {
		t.Error("half-open breaker with a probe to spare rejects: it could never recover")
	}
	var nilBreaker *breaker
	if _, _, ok := nilBreaker.allow(nil); !ok || nilBreaker.state() != "closed" {
		t.Error("breaker off must let everything through")
	}
}

func TestBreakerForceOpenAndClose(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(1) })
	breakerForce(t, b, forceOpen, 60*time.Millisecond)
	breakerExpectState(t, b, "open")
	_, wait, ok := b.allow(nil)
	if ok || wait <= 0 || wait > 60*time.Millisecond {
		t.Fatalf("forced open: allowed %v, wait %v; want refused for the rest of 60ms", ok, wait)
	}
	time.Sleep(wait + 5*time.Millisecond)
	breakerExpectState(t, b, "closed") // the override ran out
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")

	breakerForce(t, b, forceClosed, 0)
	breakerExpectState(t, b, "closed")
	for i := 0; i < 3; i++ {
		breakerSend(t, b, true) // neither refused nor counted
	}
	if mode, _ := b.override(time.Now()); mode != forceClosed {
		t.Fatal("force_close without a duration must last until reset")
	}
	clearOverride(b.upstream) // the admin API's reset
	b.reset("closed")
	if b.ov.ov.Load() != nil {
		t.Error("reset left the override")
	}
	breakerExpectState(t, b, "closed")
	breakerSend(t, b, false)
}

func TestBreakerForceOpenWaitCoversItsOwnOpenPeriod(t *testing.T) {
	b := breakerTripped(t, 3*time.Second, 1)
	breakerForce(t, b, forceOpen, 50*time.Millisecond)
	if _, wait, _ := b.allow(nil); wait < 2900*time.Millisecond {
		t.Errorf("wait %v: the breaker itself stays open for about 3s", wait)
	}
}

func TestBreakerResetClearsAndIgnoresOlderResults(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(1) })
	old, _, _ := b.allow(nil)
	breakerSend(t, b, true)
	breakerExpectState(t, b, "open")
	b.reset(b.state())
	breakerExpectState(t, b, "closed")
	if c := b.cur.Load().cb.Counts(); c.Requests != 0 {
		t.Errorf("counts after reset: %+v", c)
	}
	old.report(true, false) // let through before the reset
	breakerExpectState(t, b, "closed")
}

func TestBreakerStateChangesAreLoggedAtWarn(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	b := breakerTripped(t, 40*time.Millisecond, 1)
	b.logger.Store(zap.New(core))
	metrics.once.Do(initMetrics)
	closedBefore := testutil.ToFloat64(metrics.breakerChanges.WithLabelValues(upstreamLabel(b.upstream), "closed"))

	breakerWaitHalfOpen(t, b)
	breakerSend(t, b, false)
	breakerExpectState(t, b, "closed")

	entries := logs.FilterMessage("breaker state changed").All()
	if len(entries) != 2 {
		t.Fatalf("%d state change entries, want 2 (open>half_open, half_open>closed)", len(entries))
	}
	last := entries[1].ContextMap()
	if last["upstream"] != b.upstream || last["from"] != "half_open" || last["to"] != "closed" {
		t.Errorf("entry %v", last)
	}
	if c, _ := last["counts"].(map[string]any); c["successes"] != uint32(1) {
		t.Errorf("counts %v, want the one successful probe", last["counts"])
	}
	closed := testutil.ToFloat64(metrics.breakerChanges.WithLabelValues(upstreamLabel(b.upstream), "closed"))
	if closed != closedBefore+1 {
		t.Errorf("breaker_transitions_total{to=closed} went from %v to %v, want +1", closedBefore, closed)
	}

}

func TestBreakerTripIsLoggedWithTheWindowsCounts(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	b := breakerFor(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(3) })
	b.logger.Store(zap.New(core))
	breakerSend(t, b, false)
	for i := 0; i < 3; i++ {
		breakerSend(t, b, true)
	}
	entries := logs.FilterMessage("breaker state changed").All()
	if len(entries) != 1 {
		t.Fatalf("%d entries, want 1", len(entries))
	}
	e := entries[0].ContextMap()
	c, _ := e["counts"].(map[string]any)
	if e["from"] != "closed" || e["to"] != "open" || c["requests"] != uint32(4) ||
		c["failures"] != uint32(3) || c["consecutive_failures"] != uint32(3) {
		t.Errorf("entry %v", e)
	}
}

// breakerAcquire takes a registry reference for addr under cfg.
func breakerAcquire(cfg *Breaker, addr string) *breaker {
	return acquireBreaker(cfg, addr, nil, nil)
}

func breakerRefs(b *breaker) int {
	n, _ := breakers.References(b.key)
	return n
}

// breakerWaitGone waits until the registry let go of b.
func breakerWaitGone(t *testing.T, b *breaker, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for breakerRefs(b) > 0 || len(lookupBreakers(b.upstream)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("breaker still in the registry after %v (refs %d)", within, breakerRefs(b))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBreakerRegistrySharesBreakersBySettings(t *testing.T) {
	quick := func(c *Breaker) { c.Window = caddy.Duration(20 * time.Millisecond) }
	a1 := breakerAcquire(breakerConfig(t, quick), "registry.test:1")
	a2 := breakerAcquire(breakerConfig(t, quick), "registry.test:1")
	other := breakerAcquire(breakerConfig(t, func(c *Breaker) {
		quick(c)
		c.SlowCall = caddy.Duration(time.Second)
	}), "registry.test:1")
	if a1 != a2 {
		t.Error("same upstream and settings: want one shared breaker")
	}
	if a1 == other {
		t.Error("different settings: want separate breakers")
	}
	if n := len(lookupBreakers("registry.test:1")); n != 2 {
		t.Errorf("lookup found %d breakers, want 2", n)
	}
	if breakerRefs(a1) != 2 {
		t.Errorf("refs %d, want 2: lookups must not take references", breakerRefs(a1))
	}
	a1.release()
	a2.release()
	other.release()
	breakerWaitGone(t, a1, time.Second)
	breakerWaitGone(t, other, time.Second)
}

func TestBreakerRegistryKeepsAnOpenBreakerAcrossAReload(t *testing.T) {
	cfg := func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(1)
		c.Window = caddy.Duration(20 * time.Millisecond)
		c.OpenFor = caddy.Duration(150 * time.Millisecond)
	}
	old := breakerAcquire(breakerConfig(t, cfg), "reload.test:1")
	breakerSend(t, old, true)
	breakerExpectState(t, old, "open")

	// a reload: the old transport is cleaned up before the new one
	// sends anything
	old.release()
	time.Sleep(30 * time.Millisecond) // longer than the window
	cur := breakerAcquire(breakerConfig(t, cfg), "reload.test:1")
	if cur != old {
		t.Fatal("same settings after a reload: want the same breaker")
	}
	breakerExpectState(t, cur, "open")

	changed := breakerAcquire(breakerConfig(t, func(c *Breaker) {
		cfg(c)
		c.OpenFor = caddy.Duration(time.Second)
	}), "reload.test:1")
	breakerExpectState(t, changed, "closed")

	changed.release()
	cur.release()
	breakerWaitGone(t, cur, 2*time.Second)
}

func TestBreakerLingersNoLongerThanItsStateMatters(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(1)
		c.Window = caddy.Duration(20 * time.Millisecond)
		c.OpenFor = caddy.Duration(200 * time.Millisecond)
	})
	now := time.Now()
	if d := b.linger(now); d != 20*time.Millisecond {
		t.Errorf("closed: linger %v, want the window", d)
	}
	breakerSend(t, b, true)
	if d := b.linger(time.Now()); d <= 20*time.Millisecond || d > 200*time.Millisecond {
		t.Errorf("open: linger %v, want the rest of open_for", d)
	}
}

func TestBreakerTicketsAreSafeForConcurrentUse(t *testing.T) {
	b := breakerFor(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(0)
		c.MinRequests = 1000000
	})
	var n atomic.Int64
	done := make(chan struct{})
	for g := 0; g < 8; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 200; i++ {
				if tk, _, ok := b.allow(nil); ok {
					tk.report(i%2 == 0, false)
					n.Add(1)
				}
				_ = b.state()
				_ = b.rejects()
			}
		}()
	}
	for g := 0; g < 8; g++ {
		<-done
	}
	if c := b.win.counts(); int64(c.results()) != n.Load() || int64(c.failures) != n.Load()/2 {
		t.Errorf("the window counted %d results, %d failures; want %d, %d", c.results(), c.failures, n.Load(), n.Load()/2)
	}
}
