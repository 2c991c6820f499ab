package resilient

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-resilient/resilient/fleet"
	"github.com/caddyserver/caddy/v2"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Breaker configures the circuit breaker kept for each upstream. It
// trips on a failure ratio over a rolling window once the window holds
// min_requests results, or, while it holds fewer (a quiet upstream), on
// a run of consecutive failures; while open, requests fail at once with
// breaker_open and nothing is sent.
type Breaker struct {
	// Disabled switches the breaker off (`breaker off`). Default: `false`.
	Disabled bool `json:"disabled,omitempty"`

	// Trip when at least this share of the requests in the window failed.
	// Default: `0.5`.
	FailureRatio float64 `json:"failure_ratio,omitempty"`

	// The ratio rule applies once the window holds this many requests.
	// Default: `20`.
	MinRequests int `json:"min_requests,omitempty"`

	// Trip after this many failures in a row while the window holds
	// fewer than min_requests results (a quiet upstream); once it holds
	// that many, the ratio alone decides. 0 disables this rule.
	// Default: `5`.
	ConsecutiveFailures *int `json:"consecutive_failures,omitempty"`

	// The rolling window the ratio is computed over. Default: `10s`.
	Window caddy.Duration `json:"window,omitempty"`

	// How long the breaker stays open before it lets probes through
	// (half-open), the first time it opens. Each time a probe fails and
	// it opens again, the open period doubles, up to open_for_max; once
	// the breaker has stayed closed for a window, it starts from
	// open_for again. A short first period ends a short outage quickly;
	// the doubling keeps a provider that stays down from being probed
	// every open_for. Default: `1s` (open_for_max when that is shorter).
	OpenFor caddy.Duration `json:"open_for,omitempty"`

	// The longest open period the doubling reaches; equal to open_for,
	// the period is fixed. Default: `30s` when open_for is not set
	// either, else open_for: a config that sets open_for alone keeps a
	// fixed period, as it asked for.
	OpenForMax caddy.Duration `json:"open_for_max,omitempty"`

	// Probes let through while half-open; that many successes close the
	// breaker, one failure opens it again. Default: `3`.
	HalfOpenRequests int `json:"half_open_requests,omitempty"`

	// Response statuses counted as failures; codes or classes (`5xx`).
	// A final answer with one of them has outcome upstream_status.
	// Default: `["500","502","503","504"]`.
	FailureStatus []string `json:"failure_status,omitempty"`

	// A response slower than this (to its headers) counts as a failure;
	// 0 turns this off. Default: `0`.
	SlowCall caddy.Duration `json:"slow_call,omitempty"`

	failureStatus []statusMatch
}

var defaultFailureStatus = []string{"500", "502", "503", "504"}

// The open periods when none is configured: the first short, so that a
// provider back after a short outage is refused for at most a second;
// the longest long enough that a provider that stays down gets
// half_open_requests probes every 30s, not every second.
const (
	defaultOpenFor    = caddy.Duration(time.Second)
	defaultOpenForMax = caddy.Duration(30 * time.Second)
)

func (b *Breaker) provision() error {
	if b.FailureRatio == 0 {
		b.FailureRatio = 0.5
	}
	if b.MinRequests == 0 {
		b.MinRequests = 20
	}
	if b.ConsecutiveFailures == nil {
		v := 5
		b.ConsecutiveFailures = &v
	}
	if b.Window == 0 {
		b.Window = caddy.Duration(10 * time.Second)
	}
	switch {
	case b.OpenFor == 0 && b.OpenForMax == 0:
		b.OpenFor, b.OpenForMax = defaultOpenFor, defaultOpenForMax
	case b.OpenFor == 0:
		b.OpenFor = defaultOpenFor
		if b.OpenForMax > 0 {
			b.OpenFor = min(b.OpenFor, b.OpenForMax)
		}
	case b.OpenForMax == 0:
		b.OpenForMax = b.OpenFor
	}
	if b.HalfOpenRequests == 0 {
		b.HalfOpenRequests = 3
	}
	if b.FailureStatus == nil {
		b.FailureStatus = slices.Clone(defaultFailureStatus)
	}
	b.failureStatus = b.failureStatus[:0]
	for _, s := range b.FailureStatus {
		sm, err := parseFailureMatch(s)
		if err != nil {
			return fmt.Errorf("failure_status: %v", err)
		}
		b.failureStatus = append(b.failureStatus, sm)
	}
	return nil
}

func (b *Breaker) validate() error {
	if b.FailureRatio <= 0 || b.FailureRatio > 1 {
		return fmt.Errorf("failure_ratio must be > 0 and <= 1, got %v", b.FailureRatio)
	}
	if b.MinRequests < 1 || b.MinRequests > maxCount {
		return fmt.Errorf("min_requests must be a whole number from 1 to %d, got %d", maxCount, b.MinRequests)
	}
	if n := *b.ConsecutiveFailures; n < 0 || n > maxCount {
		return fmt.Errorf("consecutive_failures must be a whole number from 0 to %d, got %d", maxCount, n)
	}
	if b.Window <= 0 {
		return fmt.Errorf("window must be > 0, got %v", time.Duration(b.Window))
	}
	if b.OpenFor <= 0 {
		return fmt.Errorf("open_for must be > 0, got %v", time.Duration(b.OpenFor))
	}
	if b.OpenForMax < b.OpenFor {
		return fmt.Errorf("open_for_max must be >= open_for (%v), got %v", time.Duration(b.OpenFor), time.Duration(b.OpenForMax))
	}
	if b.HalfOpenRequests < 1 || b.HalfOpenRequests > maxHalfOpen {
		return fmt.Errorf("half_open_requests must be a whole number from 1 to %d, got %d", maxHalfOpen, b.HalfOpenRequests)
	}
	if b.SlowCall < 0 {
		return fmt.Errorf("slow_call must be >= 0, got %v", time.Duration(b.SlowCall))
	}
	return nil
}

// isFailureStatus reports whether status counts against the upstream.
func (b *Breaker) isFailureStatus(status int) bool {
	for _, sm := range b.failureStatus {
		if sm.match(status) {
			return true
		}
	}
	return false
}

// isFailure says how an attempt's result counts for the breaker. Client
// cancellations, and attempts that never got past the breaker or the
// pool, count neither way.
func (b *Breaker) isFailure(o Outcome, status int, took time.Duration) (failure, excluded bool) {
	switch o {
	case OutcomeCanceled, OutcomeBreakerOpen, OutcomePoolTimeout, OutcomeRateLimited:
		return false, true
	case OutcomeOK, OutcomeUpstreamStatus:
		if b.isFailureStatus(status) {
			return true, false
		}
		return b.SlowCall > 0 && took > time.Duration(b.SlowCall), false
	}
	return true, false
}

// key identifies the breaker settings, so a reload that keeps them keeps
// the breaker's state.
func (b *Breaker) key() string {
	return fmt.Sprintf("%v|%d|%d|%v|%v-%v|%d|%s|%v", b.FailureRatio, b.MinRequests,
		*b.ConsecutiveFailures, time.Duration(b.Window), time.Duration(b.OpenFor), time.Duration(b.OpenForMax),
		b.HalfOpenRequests, strings.Join(b.FailureStatus, ","), time.Duration(b.SlowCall))
}

// breaker is the circuit breaker of one upstream under one set of
// settings, shared by every transport that has both.
type breaker struct {
	upstream string
	label    string // its upstream's metrics label, held while it exists
	key      string // in the registry
	cfg      *Breaker
	win      *window
	cur      atomic.Pointer[generation]
	logger   atomic.Pointer[zap.Logger]
	ov       *overrideCell // the operator's override of its upstream
	// the fleet it follows, nil outside one: the membership of the
	// newest config that joined it (see relink)
	fleet atomic.Pointer[fleetLink]
	// a state another instance of the fleet reached, which this breaker
	// follows while it lasts; nil: none
	remote atomic.Pointer[remoteState]
	// the clock of its open periods (see openperiod.go); tests set
	// their own before first use
	now func() time.Time

	// Written by the gobreaker hooks of the current generation, under
	// its lock; read anywhere.
	cbState    atomic.Int32 // gobreaker.State, as of the last change
	openUntil  atomic.Int64 // unix nanos: when the open breaker turns half-open
	openFor    atomic.Int64 // the latest open period; 0: none since made or reset
	closedAt   atomic.Int64 // unix nanos: when it last closed after probes; 0: never
	tripCounts atomic.Pointer[windowCounts]
	rejected   atomic.Uint32 // requests turned away since it opened
	probeGen   atomic.Uint64 // bumped each time it turns half-open
	probeOK    atomic.Uint32
	probeFail  atomic.Uint32
}

// generation is one gobreaker; an admin reset starts a new one, and
// results reported to an older one are dropped with it.
type generation struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
	n  uint64
}

// errExcluded tells gobreaker a result counts neither way.
var errExcluded = errors.New("excluded")

// errFailure tells gobreaker a result is a failure.
var errFailure = errors.New("failure")

// errLateFailure tells gobreaker about a failure the window has counted
// already: of an attempt admitted while closed, or an answer that counted
// as a success and then failed (its body cut short).
var errLateFailure = errors.New("late failure")

func newBreaker(cfg *Breaker, upstream, key string) *breaker {
	b := &breaker{upstream: upstream, key: key, cfg: cfg, win: newWindow(time.Duration(cfg.Window)), ov: acquireOverride(upstream), now: time.Now}
	b.cur.Store(b.newGeneration(1))
	return b
}

// newGeneration returns a fresh gobreaker. It runs the state machine
// (open, then half_open_requests probes); whether the closed breaker
// trips is the window's call, so gobreaker keeps no window of its own,
// and how long it stays open is the breaker's (see heldOpen): gobreaker's
// Timeout is the shortest open period, open_for.
func (b *breaker) newGeneration(n uint64) *generation {
	cfg := b.cfg
	return &generation{n: n, cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        b.upstream,
		MaxRequests: uint32(cfg.HalfOpenRequests),
		Timeout:     time.Duration(cfg.OpenFor),
		ReadyToTrip: func(gobreaker.Counts) bool {
			c := b.win.counts()
			if !cfg.trips(c) {
				return false
			}
			b.tripCounts.Store(&c)
			return true
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if b.cur.Load().n == n {
				b.onStateChange(from, to)
			}
		},
		IsExcluded: func(err error) bool { return err == errExcluded },
	})}
}

// onStateChange runs under the gobreaker lock: it must not call back
// into the breaker, so it works from what the hooks recorded.
func (b *breaker) onStateChange(from, to gobreaker.State) {
	now := b.now()
	var openFor time.Duration
	switch to {
	case gobreaker.StateOpen:
		// before the state: whoever sees it open sees until when
		openFor = b.nextOpenFor(from, now)
		b.openFor.Store(int64(openFor))
		b.openUntil.Store(now.Add(openFor).UnixNano())
	case gobreaker.StateClosed:
		b.closedAt.Store(now.UnixNano())
	}
	b.cbState.Store(int32(to))
	// each state starts with a clean window; results still due from
	// before are dropped, as gobreaker drops them
	b.win.reset()
	var c transitionCounts
	switch from {
	case gobreaker.StateClosed:
		if tc := b.tripCounts.Load(); tc != nil {
			c = transitionCounts{requests: tc.results(), successes: tc.successes,
				failures: tc.failures, consecutiveFailures: tc.consecutiveFailures}
		}
	case gobreaker.StateHalfOpen:
		ok, failed := b.probeOK.Load(), b.probeFail.Load()
		c = transitionCounts{requests: ok + failed, successes: ok, failures: failed, consecutiveFailures: failed}
	case gobreaker.StateOpen:
		c.rejected = b.rejected.Load()
	}
	fields := []zap.Field{zap.Object("counts", c)}
	switch to {
	case gobreaker.StateOpen:
		b.rejected.Store(0)
		b.wakeAfter(openFor)
		fields = append(fields, zap.Duration("open_for", openFor))
	case gobreaker.StateHalfOpen:
		b.probeOK.Store(0)
		b.probeFail.Store(0)
		b.probeGen.Add(1)
	}
	b.notify("breaker state changed", stateName(from), stateName(to), fields...)
	if fl := b.fleet.Load(); fl != nil {
		// the others follow, for the rest of this open period; never
		// blocks
		s := fleet.BreakerState{Upstream: b.upstream, Settings: b.cfg.key(), State: stateName(to)}
		if to != gobreaker.StateClosed {
			s.Period = time.Duration(b.openFor.Load())
		}
		if to == gobreaker.StateOpen {
			s.Until = time.Unix(0, b.openUntil.Load())
		}
		fl.member.PublishBreaker(s)
	}
}

// follow makes the breaker follow a state another instance of its fleet
// reached (nil: the fleet's breaker closed). While an open or half-open
// state lasts, requests are turned away here too: only the instance
// that tripped counted failures, and only it sends the probes.
func (b *breaker) follow(rs *remoteState) {
	from := b.state()
	if rs != nil && rs.state == "half_open" {
		// the probes are the other instance's; should its word never
		// come, this one decides again after an open period
		rs = &remoteState{state: rs.state, origin: rs.origin, period: rs.period, until: time.Now().Add(b.followedPeriod(rs))}
	}
	old := b.remote.Swap(rs)
	if old == nil && rs == nil {
		return
	}
	if rs != nil {
		b.wakeAfter(time.Until(rs.until))
	}
	to := b.state()
	if to == from {
		// the same state again (a replay after Redis came back, say):
		// no change to log or count
		return
	}
	fields := []zap.Field{zap.String("fleet_origin", originOf(rs, old))}
	if to == "open" && rs.period > 0 {
		fields = append(fields, zap.Duration("open_for", rs.period), zap.Time("until", rs.until))
	}
	b.notify("breaker state changed by the fleet", from, to, fields...)
}

func originOf(rs, old *remoteState) string {
	if rs != nil {
		return rs.origin
	}
	return old.origin
}

// followed returns the fleet's state this breaker follows now, if any.
// A followed open state that runs out turns half-open, as the breaker
// that reached it does: its probes are the other instance's, whose word
// (open again, or closed) ends it; should that never come, this breaker
// decides again after an open period, as with a half-open state
// followed from the start.
func (b *breaker) followed(now time.Time) *remoteState {
	for {
		rs := b.remote.Load()
		if rs == nil || now.Before(rs.until) {
			return rs
		}
		var next *remoteState
		if rs.state == "open" {
			next = &remoteState{state: "half_open", origin: rs.origin, period: rs.period, until: rs.until.Add(b.followedPeriod(rs))}
			if !now.Before(next.until) {
				next = nil
			}
		}
		if b.remote.CompareAndSwap(rs, next) {
			to := stateName(gobreaker.State(b.cbState.Load()))
			if next != nil {
				to = next.state
				b.wakeAfter(next.until.Sub(now))
			}
			b.notify("breaker state changed by the fleet", rs.state, to, zap.String("fleet_origin", rs.origin))
			return next
		}
	}
}

// wakeAfter brings the breaker's state up to date once d has passed:
// when an open period, a state followed from the fleet or an override
// runs out, the change is logged and counted then, as the admin API and
// the breaker_state gauge show it, not at the next request. It takes no
// lock, so it may run under the breaker's.
func (b *breaker) wakeAfter(d time.Duration) {
	time.AfterFunc(max(d, 0)+time.Millisecond, b.wake)
}

// wake moves the breaker on to the state it is in by now.
func (b *breaker) wake() {
	b.own()   // open -> half-open once its period is over
	b.state() // an override or a followed state that ran out
}

// notify logs a change of the breaker's state at warn, and records it
// in the metrics (a change to another state) and the events. It may run
// under the breaker's lock.
func (b *breaker) notify(msg, from, to string, fields ...zap.Field) {
	if from != to {
		breakerChanged(b.upstream, to)
	}
	emitBreakerChange(b.upstream, from, to)
	logger := b.logger.Load()
	if logger == nil {
		return
	}
	if c := logger.Check(zapcore.WarnLevel, msg); c != nil {
		c.Write(append([]zap.Field{
			zap.String("upstream", b.upstream),
			zap.String("from", from),
			zap.String("to", to),
		}, fields...)...)
	}
}

// transitionCounts are the numbers behind a change of state: the
// window's counts when it trips, the probes' results when it leaves
// half-open, the requests turned away when it leaves open.
type transitionCounts struct {
	requests, successes, failures, consecutiveFailures, rejected uint32
}

// MarshalLogObject implements zapcore.ObjectMarshaler.
func (c transitionCounts) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddUint32("requests", c.requests)
	enc.AddUint32("successes", c.successes)
	enc.AddUint32("failures", c.failures)
	enc.AddUint32("consecutive_failures", c.consecutiveFailures)
	enc.AddUint32("rejected", c.rejected)
	return nil
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateHalfOpen:
		return "half_open"
	case gobreaker.StateOpen:
		return "open"
	}
	return "closed"
}

// state returns the breaker's state as placeholders and logs name it,
// operator overrides included.
func (b *breaker) state() string {
	if b == nil {
		return "closed"
	}
	switch mode, _ := b.override(time.Time{}); mode {
	case forceOpen:
		return "open"
	case forceClosed:
		return "closed"
	}
	if b.remote.Load() != nil {
		if rs := b.followed(time.Now()); rs != nil {
			return rs.state
		}
	}
	return stateName(b.own())
}

// override returns the operator override in force at now (zero: the
// time is read only when there is an override).
func (b *breaker) override(now time.Time) (forceMode, time.Time) {
	if b.ov.ov.Load() == nil {
		return forceNone, time.Time{}
	}
	if now.IsZero() {
		now = time.Now()
	}
	o, ended := b.ov.current(now)
	if ended != nil {
		b.notify("breaker override ended", overrideName(ended.mode), b.state())
	}
	if o == nil {
		return forceNone, time.Time{}
	}
	return o.mode, o.until
}

// forced logs and records that the operator set an override on b's
// upstream; from is b's state before it.
func (b *breaker) forced(from string, mode forceMode, d time.Duration) {
	fields := []zap.Field{zap.String("override", overrideName(mode))}
	if d > 0 {
		fields = append(fields, zap.Duration("for", d))
	}
	b.notify("breaker forced", from, b.state(), fields...)
}

// reset closes the breaker with clear counts; from is the state it
// showed before (an override just lifted included). Results still due from
// requests let through before are dropped. The override of its
// upstream, if any, is the operator's to lift (see clearOverride).
//
// In a fleet, it stops following the state another instance reached,
// and a breaker that was open or half-open of its own tells the fleet
// it closed: a reset is given to every instance (see shareOverride), and
// an open state kept in Redis would otherwise come back on a replay.
func (b *breaker) reset(from string) {
	own := gobreaker.State(b.cbState.Load())
	b.cur.Store(b.newGeneration(b.cur.Load().n + 1))
	b.win.reset()
	b.cbState.Store(int32(gobreaker.StateClosed))
	b.openUntil.Store(0)
	b.openFor.Store(0) // the next trip opens it for open_for
	b.closedAt.Store(0)
	b.tripCounts.Store(nil)
	b.remote.Store(nil)
	b.notify("breaker reset", from, b.state())
	if fl := b.fleet.Load(); fl != nil && own != gobreaker.StateClosed {
		fl.member.PublishBreaker(fleet.BreakerState{Upstream: b.upstream, Settings: b.cfg.key(), State: fleet.StateClosed})
	}
}

// openLeft is how long the breaker stays open on its own, as of now.
func (b *breaker) openLeft(now time.Time) time.Duration {
	return time.Duration(b.openUntil.Load() - now.UnixNano())
}

// rejects reports whether allow would turn a request away now, without
// asking for a ticket: open, or half-open with all its probes in flight.
func (b *breaker) rejects() bool {
	switch mode, _ := b.override(time.Now()); mode {
	case forceOpen:
		return true
	case forceClosed:
		return false
	}
	if b.followed(time.Now()) != nil {
		return true
	}
	switch b.own() {
	case gobreaker.StateOpen:
		return true
	case gobreaker.StateHalfOpen:
		c := b.cur.Load().cb.Counts()
		return c.Requests >= c.TotalExclusions+uint32(b.cfg.HalfOpenRequests)
	}
	return false
}

// ticket is the pass of one admitted attempt: its result goes to the
// breaker through report. A nil ticket (no breaker, or forced closed)
// reports nothing.
type ticket struct {
	b        *breaker
	g        *generation
	done     func(error) // gobreaker's; nil when admitted on the closed fast path
	epoch    uint64      // the window's, at admission
	probe    uint64      // the half-open period it probes; 0 when not a probe
	reported atomic.Bool
	guarded  bool
	cleanup  runtime.Cleanup
}

// allow asks whether a request may go to the upstream; into, when not
// nil, is where a ticket may be kept (the attempt holds one inline).
// When it may not, it returns how long until the breaker lets requests
// through again.
//
// A closed breaker admits without asking gobreaker: whether it trips is
// the window's call, so gobreaker hears of failures only (see report),
// and a healthy request takes no lock of it.
func (b *breaker) allow(into *ticket) (*ticket, time.Duration, bool) {
	if b == nil {
		return nil, 0, true
	}
	switch mode, until := b.override(time.Time{}); mode {
	case forceOpen:
		now := time.Now()
		b.rejected.Add(1)
		wait := b.openLeft(now)
		if !until.IsZero() {
			wait = max(wait, until.Sub(now))
		} else {
			wait = max(wait, time.Duration(b.cfg.OpenFor))
		}
		return nil, wait, false
	case forceClosed:
		return nil, 0, true
	}
	if b.remote.Load() != nil {
		now := time.Now()
		if rs := b.followed(now); rs != nil {
			b.rejected.Add(1)
			return nil, max(rs.until.Sub(now), time.Second), false
		}
	}
	g := b.cur.Load()
	epoch := b.win.current()
	if gobreaker.State(b.cbState.Load()) == gobreaker.StateClosed {
		if into == nil {
			into = new(ticket)
		}
		*into = ticket{b: b, g: g, epoch: epoch}
		return into, 0, true
	}
	if now := b.now(); b.heldOpen(now) {
		b.rejected.Add(1)
		return nil, b.openLeft(now), false
	}
	done, err := g.cb.Allow()
	if err != nil {
		b.rejected.Add(1)
		wait := b.openLeft(b.now())
		if errors.Is(err, gobreaker.ErrTooManyRequests) || wait <= 0 {
			// half-open with its probes in flight: they answer soon
			wait = time.Second
		}
		return nil, wait, false
	}
	t := &ticket{b: b, g: g, done: done, epoch: epoch}
	if gobreaker.State(b.cbState.Load()) != gobreaker.StateHalfOpen {
		return t, 0, true
	}
	// A probe whose result never comes would keep the half-open breaker
	// from letting others through: should its ticket be dropped without
	// a report, the garbage collector reports it as excluded.
	t.probe = b.probeGen.Load()
	t.guarded = true
	t.cleanup = runtime.AddCleanup(t, func(done func(error)) { done(errExcluded) }, done)
	return t, 0, true
}

// report gives the breaker the attempt's result. Only its first call
// counts; client cancellations are excluded: they count neither way.
func (t *ticket) report(failure, excluded bool) {
	if t == nil || t.reported.Swap(true) {
		return
	}
	if t.guarded {
		t.cleanup.Stop()
	}
	b := t.b
	recorded := b.win.record(t.epoch, failure, excluded)
	if t.done == nil {
		// admitted while closed: gobreaker needs to hear of a failure
		// only, to trip on the window's say; not of one from before a
		// change of state or a reset
		if failure && recorded && b.cur.Load() == t.g && !b.heldOpen(b.now()) {
			if done, err := t.g.cb.Allow(); err == nil {
				done(errLateFailure)
			}
		}
		return
	}
	var err error
	switch {
	case excluded:
		err = errExcluded
	case failure:
		err = errFailure
	}
	if t.probe != 0 && !excluded && t.probe == b.probeGen.Load() {
		if failure {
			b.probeFail.Add(1)
		} else {
			b.probeOK.Add(1)
		}
	}
	t.done(err)
}

// settle tells the breaker that the answer t reported as a success is
// over, and was one: it ends a run of consecutive failures.
func (t *ticket) settle() {
	if t != nil {
		t.b.win.settle(t.epoch)
	}
}

// lateFailure turns the success t reported into a failure: the answer's
// body was then cut short. A closed breaker may trip on it; a half-open
// one opens again.
func (t *ticket) lateFailure() {
	if t == nil {
		return
	}
	b := t.b
	if !b.win.amend(t.epoch) || b.heldOpen(b.now()) {
		return
	}
	if done, err := b.cur.Load().cb.Allow(); err == nil {
		done(errLateFailure)
	}
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(retryAfterSecs(d), 10)
}

// retryAfterSecs is retryAfterSeconds as a number: boxed for the
// replacer, a small one costs no allocation.
func retryAfterSecs(d time.Duration) int64 {
	s := int64(d / time.Second) // rounded up, without overflowing for the longest asks
	if d%time.Second != 0 {
		s++
	}
	return max(1, s)
}
