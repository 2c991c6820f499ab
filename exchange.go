package resilient

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/cenkalti/backoff/v4"
)

// exchange is one proxied request on its way through the transport:
// classified, its body streamed (and kept for replay while it may be
// retried), then tried until it gets an answer worth passing on or may
// not be tried again.
type exchange struct {
	t   *Transport
	up  *upstream
	req *http.Request
	// what the attempts run under: the client's request context, or,
	// for a request holding an idempotency key's claim, the same without
	// its cancellation (its answer is kept even if the client leaves)
	ctx     context.Context
	header  http.Header
	idem    idemKind
	start   time.Time
	totalAt time.Time // zero when the total timeout is off
	// the caller's deadline (deadline.header, grpc-timeout): an instant
	// of the caller's, which waiting for its body does not move; zero:
	// none
	callerAt time.Time
	// Caddy's lb_retries: how many times the request went through the
	// transport before, and when it first did
	lbTry    int
	reqStart time.Time
	prevExec executed // what the earlier tries of the request tell
	// time spent waiting for the client's body, which the total bound
	// does not count
	paused atomic.Int64
	body   *bodySource // nil when the request has none
	bkt    tokens      // the rate-limit bucket; nil without rate_limit

	hedge  *hedging // the race of the first attempt with its hedges; nil: not hedged
	hedges int      // tries that were hedges, which use up no attempts
	// a caller's deadline that could not be read; the one in grpc-timeout
	// is rewritten on each attempt
	deadlineInvalid, grpcTimeout bool

	keyed      *keyed    // the idempotency key's claim this request holds; nil: none
	keyVerdict string    // what the idempotency step said, for the log; "" when not managed
	keyValue   any       // the same, boxed for the placeholder; nil when not managed
	held       *heldBody // the request body, read ahead while it waited (holdBody); nil: not

	fb  *fallbackState // with fallback, in the same allocation (fallbackExchange); nil: none
	err *Error         // the error the request ended with, for the placeholders

	// what the caller may assume of the upstream, when the transport
	// answered itself (a replay, a conflict); else the tries tell
	exec      executed
	execFixed bool
	bodyCut   bool // the final answer's body did not end well

	tries    []try
	triesBuf [1]try          // most requests take one try
	repl     *caddy.Replacer // nil outside Caddy's HTTP server
	bo       *backoff.ExponentialBackOff
	share    share // the retry budget's, taken by the retry under way
	denied   denial
	sent     bool // some attempt may have reached the upstream
	final    *attemptResult
	outcome  Outcome
	took     time.Duration // to response headers, or to the error

	// kept inline, so that a healthy request costs one allocation for
	// all of them (and the request body's source, see bodiedExchange)
	first attempt
	resp  responseBody
}

// timeUp reports whether the request's time, which runs out at totalAt
// (zero: never), is all but over at now: with less than a millisecond
// left, nothing more is sent (see callerDeadline).
func timeUp(totalAt, now time.Time) bool {
	return !totalAt.IsZero() && totalAt.Sub(now) < time.Millisecond
}

// tryOf is the try attempt result at makes, as the log shows it.
func tryOf(at *attemptResult, admitted bool) try {
	return try{outcome: at.outcome, status: at.status, took: at.took, admitted: admitted, exec: executedBy(at)}
}

// try is one attempt as the log shows it.
type try struct {
	outcome  Outcome
	status   int
	took     time.Duration
	wait     time.Duration // the wait before this attempt
	admitted bool          // past the breaker and the pool
	hedge    bool          // a hedge of the first attempt
	exec     executed      // what it tells of the upstream
}

// attemptResult is how one attempt ended, and what it still holds when
// it returned a response (its attempt: watchdog, context, pool slot and
// breaker ticket).
type attemptResult struct {
	outcome    Outcome
	status     int
	took       time.Duration
	err        error
	neverSent  bool
	admitted   bool
	noRetry    bool // the answer must not be asked for again
	failed     bool // reported to the breaker as a failure
	retryAfter time.Duration
	phases     phaseTimes

	a      *attempt
	ticket *ticket
}

// bodiedExchange is an exchange with room for its request body's
// source, in the same allocation: a request without a body does not pay
// for it.
type bodiedExchange struct {
	exchange
	src bodySource
}

// fallbackExchange is an exchange of a transport with fallback, with
// room for the fallback's state and a body's source, in the same
// allocation: a transport without fallback does not pay for it.
type fallbackExchange struct {
	exchange
	fb  fallbackState
	src bodySource
}

func newExchange(t *Transport, req *http.Request) *exchange {
	var ex *exchange
	bodied := req.Body != nil && req.Body != http.NoBody
	switch {
	case t.Fallback != nil:
		fe := new(fallbackExchange)
		ex, fe.exchange.fb = &fe.exchange, &fe.fb
		if bodied {
			ex.body = &fe.src
		}
	case bodied:
		be := new(bodiedExchange)
		ex = &be.exchange
		ex.body = &be.src
	default:
		ex = new(exchange)
	}
	ex.t, ex.req, ex.ctx, ex.up, ex.start = t, req, req.Context(), t.upstreamFor(req), time.Now()
	ex.up.begin(ex.start)
	ex.reqStart = ex.start
	if ex.repl, _ = req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ex.repl != nil {
		if prev := providePlaceholders(ex.repl, ex); prev != nil {
			// Caddy's lb_retries sends the request again
			ex.lbTry, ex.reqStart, ex.prevExec = prev.lbTry+1, prev.reqStart, prev.executed()
		}
	}
	ex.tries = ex.triesBuf[:0]
	if d := on(t.Timeouts.Total); d > 0 {
		ex.totalAt = ex.start.Add(d)
	}
	return ex
}

// totalDeadline is when the request's time runs out, as of now: the
// earlier of the total bound, which time spent waiting for the client's
// body does not count toward, and the caller's deadline, which it does.
func (ex *exchange) totalDeadline() time.Time {
	return earlier(ex.ownTotal(), ex.callerAt)
}

// ownTotal is when the gateway's own total bound runs out, as of now:
// later by the time spent waiting for the client's body.
func (ex *exchange) ownTotal() time.Time {
	if ex.totalAt.IsZero() {
		return ex.totalAt
	}
	return ex.totalAt.Add(time.Duration(ex.paused.Load()))
}

// earlier returns the earlier of two instants, zero meaning none.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func (ex *exchange) run() (*http.Response, error) {
	ex.idem, ex.header = ex.t.Retry.classify(ex.req)
	if fb := ex.t.Fallback; fb != nil {
		// a read's answer may be kept, and a kept one served instead of
		// a failure
		ex.fallbackBegin(fb)
	}
	if dl := ex.t.Deadline; dl != nil {
		// the caller's deadline caps total
		if res, err, done := ex.callerDeadline(dl); done {
			return res, err
		}
	}
	if ix := ex.t.Idempotency; ix != nil {
		// one execution per key: a repeat is answered here
		if res, err, done := ex.keyBegin(ix); done {
			return res, err
		}
	}

	ex.up.budget.request(ex.start)
	// The breaker is asked before the body is touched: a request turned
	// away leaves its body unread, so Caddy's lb_retries can send it,
	// whole, to another upstream.
	tk, openFor, ok := ex.up.breaker.allow(&ex.first.tk)
	if !ok {
		at := &ex.first.res
		*at = attemptResult{outcome: OutcomeBreakerOpen, retryAfter: openFor, neverSent: true}
		ex.tries = append(ex.tries, try{outcome: at.outcome})
		return ex.finish(nil, at)
	}
	if ex.body != nil {
		limit := int64(0)
		if ex.t.Retry.Attempts > 1 {
			limit = ex.t.Retry.MaxBody
		}
		ex.body.init(ex.req.Body, ex.req.ContentLength, limit, &ex.paused)
		if ex.keyed != nil {
			ex.body.hash = ex.keyed.hash
		}
	}
	var wait time.Duration
	a := &ex.first
	if b := ex.rateBucket(); b != nil {
		// step 3a: a token for the first attempt, before the pool
		if retryAfter, err := ex.awaitToken(b, ex.t.RateLimit.maxWait); retryAfter > 0 || err != nil {
			tk.report(false, true)
			return ex.refused(a, retryAfter, err)
		}
	}
	for {
		var res *http.Response
		var at *attemptResult
		if delay, ok := ex.hedgeDelay(a); ok {
			// step 5a: a first attempt with no answer after delay is hedged
			res, at = ex.hedged(a, tk, delay)
		} else {
			res, at = ex.attempt(a, tk)
		}
		ex.settleShare(at)
		if ex.keyed != nil {
			ex.keyed.note(at)
		}
		t := tryOf(at, at.admitted)
		t.wait, t.hedge = wait, at.a != nil && at.a.hedge
		ex.tries = append(ex.tries, t)
		if at.admitted {
			ex.up.m.attempt(at.outcome)
		}
		now := time.Now()
		next, deny, again := ex.retryWait(res, at, now)
		var tok token
		if again {
			// decided before this answer is let go: when the breaker
			// would refuse the retry, or no token could come in time,
			// the answer goes to the client as the upstream gave it
			a = new(attempt)
			tk, _, again = ex.up.breaker.allow(&a.tk)
			if !again {
				deny = denyBreaker
			}
		}
		if again && ex.bkt != nil {
			var tw time.Duration
			tok, tw, again = ex.bkt.take(now, ex.tokenBudget(now, next))
			if again {
				next = max(next, tw)
				ex.up.m.rlWait.Observe(tw.Seconds())
			} else {
				tk.report(false, true)
				deny = denyRateLimit
			}
		}
		if !again {
			ex.settleShare(nil) // a retry refused after the budget let it through
			if deny != denyNone {
				ex.denied = deny
				ex.up.m.deniedRetry(deny)
			}
			return ex.finish(res, at)
		}
		ex.up.m.retried(at.outcome, at.status)
		ex.discard(res, at)
		if err := ex.sleep(next); err != nil {
			ex.settleShare(nil)
			tok.cancel()
			tk.report(false, true)
			at = &a.res
			*at = attemptResult{outcome: OutcomeCanceled, err: err, neverSent: true}
			return ex.finish(nil, at)
		}
		wait = next
		if tok.void() {
			// a pause came while the retry waited: its token no longer
			// stands
			if retryAfter, err := ex.awaitToken(ex.bkt, ex.t.RateLimit.maxWait); retryAfter > 0 || err != nil {
				ex.settleShare(nil)
				tk.report(false, true)
				return ex.refused(a, retryAfter, err)
			}
		}
	}
}

// rateBucket returns the token bucket of the request (nil without
// rate_limit), keeping it for its retries.
func (ex *exchange) rateBucket() tokens {
	l := ex.up.limiter
	if l == nil {
		return nil
	}
	v := ""
	if l.cfg.Key != "" && ex.repl != nil {
		v = ex.repl.ReplaceAll(l.cfg.Key, "")
	}
	ex.bkt = l.tokensFor(v)
	return ex.bkt
}

// tokenBudget is how long from now a retry that waits wait anyway may
// wait for its token: max_wait beyond its own wait, never past total.
func (ex *exchange) tokenBudget(now time.Time, wait time.Duration) time.Duration {
	d := wait + ex.t.RateLimit.maxWait
	if totalAt := ex.totalDeadline(); !totalAt.IsZero() {
		d = min(d, totalAt.Sub(now))
	}
	return d
}

// awaitToken waits for a token of b, at most maxWait and never past the
// total deadline. It returns when a token would be there if none can
// come in time, or the client's error if it left while waiting (its
// place is given back).
func (ex *exchange) awaitToken(b tokens, maxWait time.Duration) (time.Duration, error) {
	giveUp := time.Now().Add(maxWait)
	for {
		now := time.Now()
		limit := giveUp.Sub(now)
		if totalAt := ex.totalDeadline(); !totalAt.IsZero() {
			limit = min(limit, totalAt.Sub(now))
		}
		tok, wait, ok := b.take(now, max(0, limit))
		if !ok {
			return max(wait, time.Nanosecond), nil
		}
		ex.up.m.rlWait.Observe(wait.Seconds())
		if err := ex.sleep(wait); err != nil {
			tok.cancel()
			return 0, err
		}
		if !tok.void() {
			return 0, nil
		}
		// a pause came while it waited: take a token anew
	}
}

// refused ends a request that got no rate-limit token: rate_limited,
// with when a token would be there; or canceled, when the client left
// while it waited.
func (ex *exchange) refused(a *attempt, retryAfter time.Duration, err error) (*http.Response, error) {
	at := &a.res
	if err != nil {
		*at = attemptResult{outcome: OutcomeCanceled, err: err, neverSent: true}
	} else {
		*at = attemptResult{outcome: OutcomeRateLimited, retryAfter: retryAfter, neverSent: true}
	}
	ex.tries = append(ex.tries, try{outcome: at.outcome})
	return ex.finish(nil, at)
}

// obeyRetryAfter pauses the request's token bucket when the upstream
// answered 429 or 503 with a Retry-After: every request to it (of that
// key) waits until then, or ends rate_limited. Every answer counts, the
// final one or not: a hedge's, or an attempt's that lost to one.
func (ex *exchange) obeyRetryAfter(res *http.Response) {
	if ex.bkt == nil || res == nil || !ex.t.RateLimit.obey ||
		(res.StatusCode != http.StatusTooManyRequests && res.StatusCode != http.StatusServiceUnavailable) {
		return
	}
	now := time.Now()
	if ra, ok := parseRetryAfter(res.Header.Get("Retry-After"), now); ok && ra > 0 {
		ex.bkt.pause(now.Add(min(ra, maxPause)))
	}
}

// upgrade sends an upgrade request once, as it is, and reports how it
// went.
func (ex *exchange) upgrade() (*http.Response, error) {
	ex.body = nil // sent as it is, never through a body source
	if ix := ex.t.Idempotency; ix != nil {
		// a keyed request that offers an upgrade is still executed at
		// most once: a repeat is answered here
		if res, err, done := ex.keyBegin(ix); done {
			return res, err
		}
		ex.ctx = ex.req.Context() // sent as it is: its client's to end
		if k := ex.keyed; k != nil {
			// a keyed one is traced as far as its connection: one that
			// never got a connection (its client left during the dial)
			// sent nothing, and releases its key
			r := ex.req.WithContext(httptrace.WithClientTrace(ex.ctx, &httptrace.ClientTrace{
				GotConn: func(httptrace.GotConnInfo) { ex.first.set(flagGotConn) },
			}))
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = &hashedBody{ReadCloser: r.Body, hash: k.hash}
			}
			ex.req = r
		}
	}
	res, err := ex.t.HTTPTransport.RoundTrip(ex.req)
	at := &ex.first.res
	*at = attemptResult{took: time.Since(ex.start), admitted: true}
	switch {
	case err != nil:
		tr := &ex.first // not traced, unless keyed: tell connect errors by their type
		var de reverseproxy.DialError
		switch {
		case errors.As(err, &de), ex.keyed != nil && !tr.gotConn():
			at.neverSent = true
		default:
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
	ex.tries = append(ex.tries, tryOf(at, true))
	ex.final, ex.outcome, ex.took = at, at.outcome, at.took
	if ex.keyed != nil {
		ex.keyUpgraded(res, at)
	}
	if err != nil {
		e := &Error{Outcome: at.outcome, Upstream: ex.up.addr, Attempts: 1, Err: at.err}
		ex.done(e)
		return nil, err // Caddy's own handling of upgrade failures stays as it is
	}
	ex.done(nil)
	return res, nil
}

// errHeaderTooLarge marks an answer whose headers ran over the size
// limit: asking again would make the gateway read as much again.
const errHeaderTooLarge = "server response headers exceeded"

// attempt makes try a with the breaker's ticket tk: pool slot, then the
// round trip under the phase timeouts.
func (ex *exchange) attempt(a *attempt, tk *ticket) (*http.Response, *attemptResult) {
	at := &a.res
	at.a, at.ticket = a, tk
	start := time.Now()
	totalAt := ex.totalDeadline()
	poolWait, byTotal := on(ex.t.Timeouts.Pool), false
	if !totalAt.IsZero() {
		if left := totalAt.Sub(start); poolWait == 0 || left < poolWait {
			poolWait, byTotal = max(left, time.Nanosecond), true
		}
	}
	if err := ex.up.takeSlot(ex.req.Context(), poolWait); err != nil {
		tk.report(false, true)
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
	res, at := ex.send(a, tk, start)
	ex.sent = ex.sent || !at.neverSent
	return res, at
}

// send makes attempt a, which holds a connection slot, with ticket tk:
// the round trip under the phase timeouts, from start. A hedge sends the
// request's kept body of its own; every other attempt reads the
// request's body source. With less than a millisecond of the request's
// time left, nothing is sent: the attempt ends total_timeout, and is no
// attempt (see callerDeadline).
func (ex *exchange) send(a *attempt, tk *ticket, start time.Time) (*http.Response, *attemptResult) {
	at := &a.res
	at.a, at.ticket = a, tk
	now, totalAt := time.Now(), ex.totalDeadline()
	if timeUp(totalAt, now) {
		tk.report(false, true)
		ex.up.freeSlot()
		at.outcome, at.neverSent, at.took = OutcomeTotalTimeout, true, now.Sub(start)
		return nil, at
	}
	at.admitted = true
	ctx, cancel := context.WithCancelCause(ex.ctx)
	var attemptAt time.Time
	if d := on(ex.t.Timeouts.Attempt); d > 0 {
		attemptAt = start.Add(d)
	}
	a.write, a.read, a.start, a.h2c = on(ex.t.Timeouts.Write), on(ex.t.Timeouts.Read), start, ex.t.h2c
	w := &a.w
	if ex.keyed != nil {
		// once sent, carried to the upstream's answer (see carry.go)
		w.carry = newCarrier(ex, a, start)
	}
	w.init(cancel, attemptAt, ex.ownTotal(), ex.callerAt)
	if h := ex.hedge; h != nil {
		switch {
		case h.first == a:
			// its watchdog is armed: a hedge that wins may cancel it
			sched.set(h, start.Add(h.every))
		case a.hedge:
			h.sends(a)
		}
	}
	r := ex.req.WithContext(httptrace.WithClientTrace(ctx, a.trace()))
	r.Header = ex.deadlineHeader(totalAt.Sub(now), !totalAt.IsZero())
	switch {
	case a.hedge && a.kept != nil:
		r.Body, r.GetBody = io.NopCloser(bytes.NewReader(a.kept)), nil
	case ex.body != nil && !a.hedge:
		// no GetBody: net/http must not send the body again on its own
		r.Body, r.GetBody = ex.body.reader(w), nil
	}

	reported := false
	defer func() {
		if !reported {
			// a panic in the round trip: never leave a half-open breaker waiting
			tk.report(false, true)
			cancel(nil)
			w.stop()
			ex.up.freeSlot()
		}
	}()
	var res *http.Response
	var err error
	if c := w.carry; c != nil {
		// a client that leaves before its request was wholly written
		// ends the attempt: what was not sent is not carried
		stop := context.AfterFunc(ex.req.Context(), func() { w.clientLeft(a) })
		res, err = c.roundTrip(&ex.t.HTTPTransport, r)
		stop()
		if c.detached() {
			reported = true
			return ex.detachedAttempt(a, tk, c, start)
		}
	} else {
		res, err = ex.t.HTTPTransport.RoundTrip(r)
	}
	// an answer came, or RoundTrip failed with the attempt's context
	// still on (see attempt.neverSent)
	answered, settled := err == nil, ctx.Err() == nil
	at.took = time.Since(start)
	if err == nil {
		a.headers()
		switch fired := w.firedCause(); {
		case fired != nil:
			// a timer ran out just as the headers came: the context is gone
			res.Body.Close()
			res, err = nil, fired
		case res.StatusCode < 100:
			// no such status: Caddy could not pass it on
			res.Body.Close()
			res, err = nil, errBadStatus
		}
	}
	at.phases = a.phases()
	if err != nil {
		reported = true
		var cause error
		if fired := w.stop(); fired != nil {
			cause = fired
		} else if cerr := ex.ctx.Err(); cerr != nil {
			cause = context.Cause(ex.ctx)
		} else if cerr := ex.body.failed(); cerr != nil {
			// the client's body failed: the upstream is not to blame
			cause = cerr
		}
		cancel(nil)
		ex.up.freeSlot()
		at.outcome, at.err = classify(err, a, cause), cleanError(err)
		at.neverSent = !ex.t.untraced && !answered && a.neverSent(err, settled)
		at.noRetry = strings.Contains(err.Error(), errHeaderTooLarge)
		if l := ex.up.latency; l != nil && cause == errHedgeLost && !a.hedge && !at.neverSent {
			// a first attempt that a hedge beat (see latency.go)
			l.observeCut(time.Time{}, at.took)
		}
		var excluded bool
		at.failed, excluded = ex.t.Breaker.isFailure(at.outcome, 0, at.took)
		tk.report(at.failed, excluded)
		return nil, at
	}
	reported = true
	if l := ex.up.latency; l != nil {
		l.observe(time.Time{}, at.took)
	}
	at.status = res.StatusCode
	at.outcome = OutcomeOK
	if ex.t.Breaker.isFailureStatus(res.StatusCode) {
		at.outcome = OutcomeUpstreamStatus
	}
	at.failed, _ = ex.t.Breaker.isFailure(at.outcome, at.status, at.took)
	tk.report(at.failed, false)
	ex.obeyRetryAfter(res)
	return res, at
}

// errBadStatus is the error of an answer with a status below 100.
var errBadStatus = errors.New("upstream answered with a status below 100")

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
	w := &at.a.w
	w.enter(causeRead, bound)
	_, _ = io.CopyN(io.Discard, res.Body, 64<<10)
	res.Body.Close()
	if !at.failed {
		at.ticket.settle()
	}
	w.stop()
	w.cancel(nil)
	ex.up.freeSlot()
}

// letGoNow lets go of an answer that will not be passed on, without
// reading what is left of it: the connection is not reused.
func (ex *exchange) letGoNow(res *http.Response, at *attemptResult) {
	res.Body.Close()
	if !at.failed {
		at.ticket.settle()
	}
	w := &at.a.w
	w.stop()
	w.cancel(nil)
	ex.up.freeSlot()
}

// sleep waits d before the next attempt, unless the client goes away.
// A keyed request's own context no longer ends with its client's (see
// keyBegin), but a wait comes before anything of the request is sent
// (or after an attempt that released the key): a client gone then ends
// the request, and its key is released.
func (ex *exchange) sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	client := ex.req.Context()
	select {
	case <-t.C:
		return nil
	case <-client.Done():
		return context.Cause(client)
	}
}

// finish returns the final response, its body wrapped to finish the
// request when it is closed, or the typed error.
func (ex *exchange) finish(res *http.Response, at *attemptResult) (*http.Response, error) {
	if ex.fb != nil && ex.fb.cfg != nil {
		// a failure that falls back gets the read's kept answer, unless
		// Caddy is to try another upstream
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		a, ok := ex.fallbackLookup(at.outcome, status)
		switch {
		case !ok:
		case res == nil:
			ok = !ex.lbMovesOn(!ex.sent && ex.body.untouched() && ex.held == nil)
		default:
			ok = !ex.lbMovesAnswer(res)
		}
		if ok {
			if res != nil {
				// not drained: the kept answer does not wait for it
				ex.letGoNow(res, at)
			}
			if ex.body != nil {
				ex.body.end()
			}
			return ex.serveKept(a), nil
		}
	}
	ex.final, ex.outcome, ex.took = at, at.outcome, time.Since(ex.start)
	if res == nil {
		e := &Error{
			Outcome:    at.outcome,
			Upstream:   ex.up.addr,
			Attempts:   ex.attempts(),
			RetryAfter: at.retryAfter,
			NeverSent:  !ex.sent,
			Err:        at.err,
			movable:    !ex.sent && ex.body.untouched() && ex.held == nil,
		}
		if at.outcome == OutcomeCanceled && !errors.Is(e, context.Canceled) {
			e.Err = context.Canceled
		}
		if ex.keyed != nil {
			ex.keyFailed(at.outcome)
		}
		if ex.body != nil {
			ex.body.end()
		}
		ex.done(e)
		return nil, e.handlerError()
	}
	if ex.body != nil {
		if ex.keyed != nil {
			// the fingerprint needs what the upstream did not read: the
			// client's body stays open until it is taken, once the answer
			// is over (keyDone); taken now, it would pull the body from
			// under net/http, which may still be sending it on the
			// connection the answer streams on
			ex.body.holdOpen()
		}
		ex.body.end()
	}
	if v := res.Header["Retry-After"]; len(v) > 0 {
		// {http.resilient.retry_after} tells the caller when to repeat
		if ra, ok := parseRetryAfter(v[0], time.Now()); ok && ra > 0 {
			at.retryAfter = ra
		}
	}
	if ex.keyed != nil {
		ex.keyAnswered(res)
	}
	if ex.fb != nil && ex.fb.cfg != nil {
		ex.fallbackAnswered(res)
	}
	ex.resp = responseBody{rc: res.Body, ex: ex, a: at.a, client: ex.req.Context()}
	if idle := on(ex.t.Timeouts.Read); idle > 0 {
		ex.resp.watch = true
		at.a.w.watchBody(idle)
	}
	res.Body = &ex.resp
	return res, nil
}

// bodyClosed ends the exchange once the final answer's body is closed;
// end says how the body ended. When it did not end well the status is
// with the client already: the log entry and the metrics say how the
// body ended, and the breaker counts it as a failure.
func (ex *exchange) bodyClosed(a *attempt, end Outcome) {
	ex.up.freeSlot()
	at := &a.res
	switch {
	case end != OutcomeOK:
		if !at.failed {
			at.ticket.lateFailure()
		}
		ex.outcome, ex.bodyCut = end, true
	case !at.failed:
		at.ticket.settle()
	}
	if ex.keyed != nil {
		ex.keyDone(end)
	}
	if ex.fb != nil && ex.fb.capture {
		ex.fallbackKeep(end)
	}
	ex.done(nil)
}

// done ends the request: placeholders, the log entry, the metrics.
func (ex *exchange) done(e *Error) {
	if e != nil {
		ex.err = e
	}
	ex.log(e)
	ex.up.m.request(ex.outcome, ex.took)
	ex.up.done()
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
// so no query string reaches a log, and hides a dial error from
// errors.As: Caddy's lb_retries moves any request whose error unwraps to
// one, and only the Error's own As may say so (one whose body was read
// must not go).
func cleanError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return hideDialError(err)
}
