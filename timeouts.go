package resilient

import (
	"context"
	"fmt"
	"sync"
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
// timer. Whichever bound runs out first (the current phase, the attempt
// or the whole request) cancels the attempt's context with its own
// cause, which names the outcome.
//
// Time the attempt spends waiting for the client to send more of its
// body is the client's, not the upstream's: no bound runs out while a
// read from the client is in progress, and the wait is added to the
// write, attempt and total deadlines afterwards.
type watchdog struct {
	mu      sync.Mutex
	timer   *time.Timer
	cancel  context.CancelCauseFunc
	phase   *timeoutCause
	phaseAt time.Time
	attempt time.Time // zero once response headers arrived
	total   time.Time // zero once response headers arrived
	fired   error
	waiting bool // a read from the client is in progress
	headers bool // the final response headers arrived
}

func newWatchdog(cancel context.CancelCauseFunc, attemptAt, totalAt time.Time) *watchdog {
	w := &watchdog{cancel: cancel, attempt: attemptAt, total: totalAt}
	if at, _ := w.next(); !at.IsZero() {
		w.timer = time.AfterFunc(time.Until(at), w.fire)
	}
	return w
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
	w.attempt, w.total = time.Time{}, time.Time{}
	w.phase, w.phaseAt = nil, time.Time{}
	w.reset()
	w.mu.Unlock()
}

// clientWait notes that a read from the client begins; it returns when.
func (w *watchdog) clientWait() time.Time {
	now := time.Now()
	if w == nil {
		return now
	}
	w.mu.Lock()
	w.waiting = true
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Unlock()
	return now
}

// clientDone notes that the read from the client that began at since
// is over, and moves the deadlines by the time it took, which it
// returns.
func (w *watchdog) clientDone(since time.Time) time.Duration {
	d := time.Since(since)
	if w == nil {
		return d
	}
	w.mu.Lock()
	w.waiting = false
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
	w.mu.Unlock()
	if w.headers {
		return 0 // the total bound was over already
	}
	return d
}

// abort cancels the attempt with cause, unless a bound already did.
func (w *watchdog) abort(cause error) {
	w.mu.Lock()
	if w.fired != nil {
		w.mu.Unlock()
		return
	}
	w.fired = cause
	w.mu.Unlock()
	w.cancel(cause)
}

// stop releases the timer. It reports the cause if the watchdog had
// already fired.
func (w *watchdog) stop() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
	w.attempt, w.total, w.phase = time.Time{}, time.Time{}, nil
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
	if !w.total.IsZero() && (at.IsZero() || !at.Before(w.total)) {
		at, cause = w.total, causeTotal
	}
	return at, cause
}

// reset arms the timer for the next deadline. Called with mu held.
func (w *watchdog) reset() {
	at, _ := w.next()
	if at.IsZero() || w.fired != nil || w.waiting {
		if w.timer != nil {
			w.timer.Stop()
		}
		return
	}
	if w.timer == nil {
		w.timer = time.AfterFunc(time.Until(at), w.fire)
		return
	}
	w.timer.Reset(time.Until(at))
}

func (w *watchdog) fire() {
	w.mu.Lock()
	at, cause := w.next()
	if cause == nil || w.fired != nil || w.waiting {
		w.mu.Unlock()
		return
	}
	if d := time.Until(at); d > 0 {
		// the deadline moved since the timer was set
		w.timer.Reset(d)
		w.mu.Unlock()
		return
	}
	w.fired = cause
	w.mu.Unlock()
	w.cancel(cause)
}
