package resilient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Timeouts bounds each phase of a request to the upstream. A negative
// value (`off` in the Caddyfile) switches that bound off.
type Timeouts struct {
	// How long to wait for a TCP connection, DNS lookup included. The
	// `transport http` option dial_timeout is used when this is not set.
	// Default: `3s`.
	Connect caddy.Duration `json:"connect,omitempty"`

	// How long the TLS handshake may take. The `transport http` option
	// tls_timeout is used when this is not set. Default: `5s`.
	TLS caddy.Duration `json:"tls,omitempty"`

	// How long writing the request, headers and body, may take once a
	// connection is held. Default: `10s`.
	Write caddy.Duration `json:"write,omitempty"`

	// How long to wait for response headers once the request is written;
	// also the longest silence allowed while the response body streams.
	// Default: `30s`.
	Read caddy.Duration `json:"read,omitempty"`

	// How long to wait for a free connection slot when the upstream is
	// at pool.max_conns. Default: `1s`.
	Pool caddy.Duration `json:"pool,omitempty"`

	// How long one attempt may take, from its start to response headers.
	// It may not be longer than total. Default: `10s`, or total when that
	// is shorter.
	Attempt caddy.Duration `json:"attempt,omitempty"`

	// How long the whole request may take, all attempts and backoff waits
	// included, up to response headers. Default: `30s`, or attempt when
	// that is longer.
	Total caddy.Duration `json:"total,omitempty"`
}

func (t *Timeouts) setDefaults() {
	def := func(d *caddy.Duration, v time.Duration) {
		if *d == 0 {
			*d = caddy.Duration(v)
		}
	}
	// connect and tls are left to the embedded transport's own options
	// when unset here; see Transport.Provision.
	def(&t.Write, 10*time.Second)
	def(&t.Read, 30*time.Second)
	def(&t.Pool, time.Second)
	// a default never contradicts a bound written out: an unset attempt
	// bound is at most the total one, an unset total at least the attempt
	attempt, total := 10*time.Second, 30*time.Second
	if t.Total > 0 {
		attempt = min(attempt, time.Duration(t.Total))
	}
	if t.Attempt > 0 {
		total = max(total, time.Duration(t.Attempt))
	}
	def(&t.Attempt, attempt)
	def(&t.Total, total)
}

// validate refuses an attempt bound longer than the total one: the
// total would cut every attempt first, and the attempt bound would never
// apply.
func (t *Timeouts) validate() error {
	if t.Attempt > 0 && t.Total > 0 && t.Attempt > t.Total {
		return fmt.Errorf("attempt %v is longer than total %v", time.Duration(t.Attempt), time.Duration(t.Total))
	}
	return nil
}

// on returns d as a time.Duration, with 0 meaning "no bound".
func on(d caddy.Duration) time.Duration {
	if d < 0 {
		return 0
	}
	return time.Duration(d)
}

// watchdog enforces the phase timeouts of one attempt with a single
// deadline in the process-wide scheduler (schedule.go). Whichever bound
// runs out first (the current phase, the attempt or the whole request)
// cancels the attempt's context with its own cause, which names the
// outcome. Once the response headers are in, the same deadline watches
// the longest silence while the body streams.
//
// Time the attempt spends waiting for the client to send more of its
// body is the client's, not the upstream's: no bound runs out while a
// read from the client is in progress, and the wait is added to the
// write, attempt and total deadlines afterwards. The caller's own
// deadline is the exception: it is an instant the caller chose, which
// its slow body does not move, and it runs out even while its body is
// waited for.
type watchdog struct {
	mu      sync.Mutex
	cancel  context.CancelCauseFunc
	phase   *timeoutCause
	phaseAt time.Time
	attempt time.Time // zero once response headers arrived
	total   time.Time // zero once response headers arrived
	caller  time.Time // the caller's deadline; zero once response headers arrived
	fired   error
	waiting atomic.Bool // a read from the client is in progress
	headers bool        // the final response headers arrived
	ended   bool        // the round trip returned
	armed   time.Time   // what the scheduler was asked to fire it at; zero: nothing

	sched schedSlot // guarded by the scheduler's lock

	// the round trip of a keyed attempt, which a client-facing bound
	// answers the client of rather than cancels (see carry.go); nil:
	// none
	carry *carrier

	// The body's silence is watched lazily: a Read only notes when it
	// began, and the deadline, coming once per idle bound, checks whether
	// the read in progress has gone on too long. Time the client spends
	// not reading never counts.
	idle     time.Duration // the read bound while the body streams; 0: not watched
	reading  atomic.Int64  // when the Read in progress began (unix nanos); 0 between reads
	idleFire atomic.Bool   // the body went silent for too long
}

func (w *watchdog) slot() *schedSlot { return &w.sched }

// init arms w for an attempt bounded by attemptAt, totalAt (the
// gateway's total bound) and callerAt (the caller's deadline); zero:
// none.
func (w *watchdog) init(cancel context.CancelCauseFunc, attemptAt, totalAt, callerAt time.Time) {
	w.cancel, w.attempt, w.total, w.caller = cancel, attemptAt, totalAt, callerAt
	if at, _ := w.next(); !at.IsZero() {
		w.armed = at
		sched.set(w, at)
	}
}

// arm asks the scheduler to fire w at at (zero: not at all). Called
// with mu held.
func (w *watchdog) arm(at time.Time) {
	if at.Equal(w.armed) {
		return
	}
	w.armed = at
	sched.set(w, at)
}

// enter starts a phase with its own bound d (0: none); nil ends the
// current phase.
func (w *watchdog) enter(phase *timeoutCause, d time.Duration) {
	w.mu.Lock()
	w.setPhase(phase, d)
	w.mu.Unlock()
}

// enterBeforeHeaders is enter for the phases that lead to the response
// headers: once they arrived it does nothing, since net/http may report
// the end of the request write after an early answer.
func (w *watchdog) enterBeforeHeaders(phase *timeoutCause, d time.Duration) {
	w.mu.Lock()
	if !w.headers {
		w.setPhase(phase, d)
	}
	w.mu.Unlock()
}

// setPhase is enter with mu held.
func (w *watchdog) setPhase(phase *timeoutCause, d time.Duration) {
	if phase == nil || d <= 0 {
		w.phase, w.phaseAt = nil, time.Time{}
	} else {
		w.phase, w.phaseAt = phase, time.Now().Add(d)
	}
	w.reset()
}

// headersDone lifts the attempt and total bounds and ends the phase:
// they end at the final response headers.
func (w *watchdog) headersDone() {
	w.mu.Lock()
	w.headers = true
	w.attempt, w.total, w.caller = time.Time{}, time.Time{}, time.Time{}
	w.phase, w.phaseAt = nil, time.Time{}
	// the deadline is left as it is: if it comes it finds nothing to
	// do, and watching the body sets a new one; most answers end sooner
	w.mu.Unlock()
}

// watchBody starts watching the response body for silences longer than
// idle (0: none).
func (w *watchdog) watchBody(idle time.Duration) {
	if idle <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired != nil {
		return
	}
	w.idle = idle
	w.arm(time.Now().Add(idle))
}

// bodyReadBegin and bodyReadEnd bracket a Read of the response body.
func (w *watchdog) bodyReadBegin() { w.reading.Store(time.Now().UnixNano()) }
func (w *watchdog) bodyReadEnd()   { w.reading.Store(0) }

// clientWait notes that a read from the client begins; it returns when.
// It takes no lock: most reads find the client's bytes there already.
func (w *watchdog) clientWait() time.Time {
	if w != nil {
		w.waiting.Store(true)
	}
	return time.Now()
}

// clientShort is a wait for the client too short to move the deadlines
// for: the client's bytes were there, or nearly.
const clientShort = 100 * time.Microsecond

// waitRecheck is how soon a deadline that came while the client was
// being waited for is looked at again.
const waitRecheck = 100 * time.Millisecond

// clientDone notes that the read from the client that began at since
// is over, and moves the deadlines by the time it took, which it
// returns.
func (w *watchdog) clientDone(since time.Time) time.Duration {
	d := time.Since(since)
	if w == nil {
		return d
	}
	w.waiting.Store(false)
	if d < clientShort {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.headers {
		return 0 // the bounds ended with the headers; the total one too
	}
	shift := func(t *time.Time) {
		if !t.IsZero() {
			*t = t.Add(d)
		}
	}
	shift(&w.attempt)
	shift(&w.total)
	if w.phase == causeWrite {
		shift(&w.phaseAt)
	}
	w.reset()
	return d
}

// abort cancels the attempt with cause, unless a bound already did
// (then with the bound's). The context is canceled when it returns,
// whoever came first.
func (w *watchdog) abort(cause error) {
	w.mu.Lock()
	if w.fired == nil {
		w.fired = cause
	}
	cause = w.fired
	w.mu.Unlock()
	w.cancel(cause)
}

// errClientLeft ends a keyed attempt whose client left before the
// request was wholly written.
var errClientLeft = errors.New("the client went away before its request was sent")

// clientLeft ends attempt a, whose client went away, unless its request
// was wholly written (it is carried to the upstream's answer, see
// carry.go), its round trip already returned, or a bound ended it.
func (w *watchdog) clientLeft(a *attempt) {
	w.mu.Lock()
	if w.fired != nil || w.ended || a.has(flagWritten) {
		w.mu.Unlock()
		return
	}
	w.fired = errClientLeft
	w.mu.Unlock()
	w.cancel(errClientLeft)
}

// roundTripEnded notes that the round trip returned: from now on, a
// client that leaves does not end the attempt (its answer is kept).
func (w *watchdog) roundTripEnded() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
}

// stop gives up w's deadline. It reports the cause if the watchdog had
// already fired.
func (w *watchdog) stop() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.arm(time.Time{})
	w.attempt, w.total, w.caller, w.phase, w.idle = time.Time{}, time.Time{}, time.Time{}, nil, 0
	return w.fired
}

// firedCause returns the cause the watchdog fired with, if it did.
func (w *watchdog) firedCause() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}

// next returns the earliest deadline and its cause. Called with mu held.
func (w *watchdog) next() (time.Time, *timeoutCause) {
	at, cause := w.phaseAt, w.phase
	if !w.attempt.IsZero() && (at.IsZero() || w.attempt.Before(at)) {
		at, cause = w.attempt, causeAttempt
	}
	// the total bound wins ties: when both run out together, the request
	// as a whole is over
	if total := earlier(w.total, w.caller); !total.IsZero() && (at.IsZero() || !at.Before(total)) {
		at, cause = total, causeTotal
	}
	return at, cause
}

// reset asks the scheduler for the next deadline. Called with mu held.
func (w *watchdog) reset() {
	if w.idle > 0 {
		return // the body's watch keeps the deadline
	}
	at, _ := w.next()
	if w.fired != nil {
		at = time.Time{}
	}
	w.arm(at)
}

// fire runs when the scheduler found w's deadline due.
func (w *watchdog) fire() {
	w.mu.Lock()
	w.armed = time.Time{} // the scheduler let go of it
	if w.fired != nil {
		w.mu.Unlock()
		return
	}
	if w.idle > 0 {
		w.checkBody()
		return
	}
	at, cause := w.next()
	if cause == nil {
		w.mu.Unlock()
		return
	}
	if w.waiting.Load() && !(cause == causeTotal && at.Equal(w.caller)) {
		// the client is being waited for: its time does not count, and
		// the deadlines move once it sent (all but its own)
		w.arm(time.Now().Add(waitRecheck))
		w.mu.Unlock()
		return
	}
	if time.Until(at) > 0 {
		// the deadline moved since it was asked for
		w.arm(at)
		w.mu.Unlock()
		return
	}
	if w.carry != nil && (cause == causeRead || cause == causeAttempt || cause == causeTotal) {
		switch carried, late := w.carry.detach(cause); {
		case carried:
			// the client is answered at its deadline; the round trip
			// goes on, bounded by complete_within from its sending
			w.attempt, w.total, w.caller = time.Time{}, time.Time{}, time.Time{}
			w.phase, w.phaseAt = causeCarried, w.carry.until
			w.arm(w.carry.until)
			w.mu.Unlock()
			return
		case late:
			// the upstream's answer is in: it goes to the client
			w.mu.Unlock()
			return
		}
	}
	w.fired = cause
	w.mu.Unlock()
	w.cancel(cause)
}

// checkBody cuts a body read that has waited longer than the idle
// bound, or looks again later. Called with mu held; it unlocks.
func (w *watchdog) checkBody() {
	began, now := w.reading.Load(), time.Now()
	if began == 0 {
		w.arm(now.Add(w.idle))
		w.mu.Unlock()
		return
	}
	if left := time.Duration(began + int64(w.idle) - now.UnixNano()); left > 0 {
		w.arm(now.Add(left))
		w.mu.Unlock()
		return
	}
	w.idleFire.Store(true)
	w.fired = causeRead
	w.mu.Unlock()
	w.cancel(causeRead)
}
