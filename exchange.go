package resilient

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/cenkalti/backoff/v4"
)

// exchange is one proxied request on its way through the transport:
// classified, its body made replayable, then tried until it gets an
// answer worth passing on or may not be tried again.
type exchange struct {
	t       *Transport
	up      *upstream
	req     *http.Request
	header  http.Header
	idem    idempotency
	start   time.Time
	totalAt time.Time // zero when the total timeout is off

	replayable bool
	replay     *replayBody   // nil when there is no body to keep
	body       io.ReadCloser // a body that can be sent only once

	tries    []try
	triesBuf [3]try
	repl     *caddy.Replacer // nil outside Caddy's HTTP server
	bo       *backoff.ExponentialBackOff
	denied   denial
	sent     bool // some attempt may have reached the upstream
	bodyRead bool // the client's body was read (or handed to net/http)
	final    *attemptResult
	outcome  Outcome
	took     time.Duration // to response headers, or to the error
	first    *admission    // the breaker's answer for the first attempt, asked before the body is read
}

// try is one attempt as the log shows it.
type try struct {
	outcome  Outcome
	status   int
	took     time.Duration
	wait     time.Duration // the wait before this attempt
	admitted bool          // past the breaker and the pool
}

// attemptResult is how one attempt ended, and what it still holds when
// it returned a response (its watchdog, context and pool slot).
type attemptResult struct {
	outcome    Outcome
	status     int
	took       time.Duration
	err        error
	neverSent  bool
	admitted   bool
	retryAfter time.Duration
	phases     phaseTimes

	w      *watchdog
	cancel context.CancelCauseFunc
}

func newExchange(t *Transport, req *http.Request) *exchange {
	ex := &exchange{t: t, req: req, up: t.upstreamFor(req), start: time.Now()}
	ex.repl, _ = req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	ex.tries = ex.triesBuf[:0]
	if d := on(t.Timeouts.Total); d > 0 {
		ex.totalAt = ex.start.Add(d)
	}
	return ex
}

func (ex *exchange) run() (*http.Response, error) {
	ex.idem, ex.header = ex.t.Retry.classify(ex.req)
	ex.up.budget.request(ex.start)
	if ex.admitFirst() {
		ex.prepareBody()
	}
	var wait time.Duration
	for {
		res, at := ex.attempt()
		ex.tries = append(ex.tries, try{outcome: at.outcome, status: at.status, took: at.took, wait: wait, admitted: at.admitted})
		if at.admitted {
			ex.up.m.attempts[at.outcome].Inc()
		}
		next, deny, again := ex.retryWait(res, at, time.Now())
		if !again {
			if deny != denyNone {
				ex.denied = deny
				ex.up.m.denied[deny].Inc()
			}
			return ex.finish(res, at)
		}
		ex.up.m.retried(at.outcome, at.status)
		ex.discard(res, at)
		if err := ex.sleep(next); err != nil {
			at = &attemptResult{outcome: OutcomeCanceled, err: err, neverSent: true}
			return ex.finish(nil, at)
		}
		wait = next
	}
}

// upgrade sends an upgrade request once, as it is, and reports how it
// went.
func (ex *exchange) upgrade() (*http.Response, error) {
	res, err := ex.t.HTTPTransport.RoundTrip(ex.req)
	at := &attemptResult{took: time.Since(ex.start), admitted: true}
	switch {
	case err != nil:
		tr := &attemptTrace{} // not traced: tell connect errors by their type
		var de reverseproxy.DialError
		if !errors.As(err, &de) {
			tr.set(flagGotConn)
		}
		var cause error
		if ex.req.Context().Err() != nil {
			cause = context.Cause(ex.req.Context())
		}
		at.outcome, at.err = classify(err, tr, cause), cleanError(err)
	case ex.t.Breaker.isFailureStatus(res.StatusCode):
		at.outcome, at.status = OutcomeUpstreamStatus, res.StatusCode
	default:
		at.outcome, at.status = OutcomeOK, res.StatusCode
	}
	ex.tries = append(ex.tries, try{outcome: at.outcome, status: at.status, took: at.took, admitted: true})
	ex.final, ex.outcome, ex.took = at, at.outcome, at.took
	if err != nil {
		e := &Error{Outcome: at.outcome, Upstream: ex.up.addr, Attempts: 1, Err: at.err}
		ex.done(e)
		return nil, err // Caddy's own handling of upgrade failures stays as it is
	}
	ex.report(nil)
	ex.done(nil)
	return res, nil
}

// prepareBody keeps the request body for replay when the request may be
// retried and the body fits in max_body.
func (ex *exchange) prepareBody() {
	b := ex.req.Body
	if b == nil || b == http.NoBody || ex.req.ContentLength == 0 {
		ex.replayable = true
		return
	}
	// from here on the client's body is ours: Caddy cannot send it again
	ex.bodyRead = true
	r := ex.t.Retry
	if r.Attempts < 2 {
		ex.body = b
		return
	}
	rb, rest, _ := bufferBody(b, ex.req.ContentLength, r.MaxBody)
	if rb == nil {
		ex.body = rest
		return
	}
	ex.replay, ex.replayable = rb, true
}

// attempt makes one try: breaker, pool slot, then the round trip under
// the phase timeouts.
func (ex *exchange) attempt() (*http.Response, *attemptResult) {
	at := new(attemptResult)
	start := time.Now()
	ticket, openFor, ok := ex.admit()
	if !ok {
		at.outcome, at.retryAfter, at.neverSent = OutcomeBreakerOpen, openFor, true
		return nil, at
	}

	poolWait, byTotal := on(ex.t.Timeouts.Pool), false
	if !ex.totalAt.IsZero() {
		if left := ex.totalAt.Sub(start); poolWait == 0 || left < poolWait {
			poolWait, byTotal = max(left, time.Nanosecond), true
		}
	}
	if err := ex.up.takeSlot(ex.req.Context(), poolWait); err != nil {
		ticket(false, true)
		at.neverSent = true
		switch {
		case err == errNoSlot && byTotal:
			at.outcome = OutcomeTotalTimeout
		case err == errNoSlot:
			at.outcome, at.retryAfter = OutcomePoolTimeout, time.Second
		default:
			at.outcome, at.err = OutcomeCanceled, err
		}
		at.took = time.Since(start)
		return nil, at
	}

	at.admitted = true
	ctx, cancel := context.WithCancelCause(ex.req.Context())
	var attemptAt time.Time
	if d := on(ex.t.Timeouts.Attempt); d > 0 {
		attemptAt = start.Add(d)
	}
	w := newWatchdog(cancel, attemptAt, ex.totalAt)
	tr := &attemptTrace{w: w, write: on(ex.t.Timeouts.Write), read: on(ex.t.Timeouts.Read), start: start}
	r := ex.req.WithContext(httptrace.WithClientTrace(ctx, tr.clientTrace()))
	r.Header = ex.header
	switch {
	case ex.replay != nil:
		r.Body = ex.replay.reader()
		r.GetBody = func() (io.ReadCloser, error) { return ex.replay.reader(), nil }
	case ex.body != nil:
		r.Body, ex.body = ex.body, nil
	}

	reported := false
	defer func() {
		if !reported {
			// a panic in the round trip: never leave a half-open breaker waiting
			ticket(false, true)
			cancel(nil)
			w.stop()
			ex.up.freeSlot()
		}
	}()
	res, err := ex.t.HTTPTransport.RoundTrip(r)
	at.took = time.Since(start)
	if err == nil {
		w.headersDone()
		if fired := w.firedCause(); fired != nil {
			// a timer ran out just as the headers came: the context is gone
			res.Body.Close()
			res, err = nil, fired
		}
	}
	at.phases = tr.phases()
	if err != nil {
		reported = true
		var cause error
		if fired := w.stop(); fired != nil {
			cause = fired
		} else if cerr := ex.req.Context().Err(); cerr != nil {
			cause = context.Cause(ex.req.Context())
		}
		cancel(nil)
		ex.up.freeSlot()
		at.outcome, at.err = classify(err, tr, cause), cleanError(err)
		at.neverSent = !ex.t.untraced && tr.neverSent(err)
		ex.sent = ex.sent || !at.neverSent
		ticket(ex.t.Breaker.isFailure(at.outcome, 0, at.took))
		return nil, at
	}
	reported = true
	ex.sent = true
	at.status = res.StatusCode
	at.outcome = OutcomeOK
	if ex.t.Breaker.isFailureStatus(res.StatusCode) {
		at.outcome = OutcomeUpstreamStatus
	}
	ticket(ex.t.Breaker.isFailure(at.outcome, at.status, at.took))
	at.w, at.cancel = w, cancel
	return res, at
}

// discard lets go of an attempt that will be retried: its response body
// is drained (a little, briefly) so the connection can be reused.
func (ex *exchange) discard(res *http.Response, at *attemptResult) {
	if res == nil {
		return
	}
	bound := time.Second // a retried answer gets little patience
	if r := on(ex.t.Timeouts.Read); r > 0 {
		bound = min(bound, r)
	}
	at.w.enter(causeRead, bound)
	_, _ = io.CopyN(io.Discard, res.Body, 64<<10)
	res.Body.Close()
	at.w.stop()
	at.cancel(nil)
	ex.up.freeSlot()
}

// sleep waits d before the next attempt, unless the client goes away.
func (ex *exchange) sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ex.req.Context().Done():
		return context.Cause(ex.req.Context())
	}
}

// finish returns the final response, its body wrapped to finish the
// request when it is closed, or the typed error.
func (ex *exchange) finish(res *http.Response, at *attemptResult) (*http.Response, error) {
	ex.final, ex.outcome, ex.took = at, at.outcome, time.Since(ex.start)
	if res == nil {
		e := &Error{
			Outcome:    at.outcome,
			Upstream:   ex.up.addr,
			Attempts:   ex.attempts(),
			RetryAfter: at.retryAfter,
			NeverSent:  !ex.sent,
			Err:        at.err,
			movable:    !ex.sent && !ex.bodyRead,
		}
		if at.outcome == OutcomeCanceled && !errors.Is(e, context.Canceled) {
			e.Err = context.Canceled
		}
		ex.done(e)
		return nil, e.handlerError()
	}
	ex.report(nil)
	res.Body = newAttemptBody(res.Body, at, on(ex.t.Timeouts.Read), func(timedOut bool) {
		ex.up.freeSlot()
		if timedOut {
			ex.outcome = OutcomeReadTimeout
			ex.report(nil)
		}
		ex.done(nil)
	})
	return res, nil
}

// done ends the request: placeholders, the log entry, the metrics.
func (ex *exchange) done(e *Error) {
	if e != nil {
		ex.report(e)
	}
	ex.log(e)
	ex.up.m.requests[ex.outcome].Inc()
	ex.up.m.duration[ex.outcome].Observe(ex.took.Seconds())
}

// attempts counts the tries that were let through to the upstream.
func (ex *exchange) attempts() int {
	n := 0
	for _, t := range ex.tries {
		if t.admitted {
			n++
		}
	}
	return n
}

// cleanError drops the URL that net/http sometimes puts in its errors,
// so no query string reaches a log.
func cleanError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// admission is the breaker's answer for one attempt.
type admission struct {
	t    ticket
	wait time.Duration
	ok   bool
}

// admitFirst asks the breaker for the first attempt before the request
// body is read: a request turned away leaves its body unread, so Caddy's
// lb_retries can send it, whole, to another upstream. It reports whether
// the request was let through.
func (ex *exchange) admitFirst() bool {
	t, wait, ok := ex.up.breaker.allow()
	ex.first = &admission{t: t, wait: wait, ok: ok}
	return ok
}

// admit asks the breaker for an attempt; the first one's answer comes
// from admitFirst.
func (ex *exchange) admit() (ticket, time.Duration, bool) {
	if a := ex.first; a != nil {
		ex.first = nil
		return a.t, a.wait, a.ok
	}
	return ex.up.breaker.allow()
}
