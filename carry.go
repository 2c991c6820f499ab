package resilient

import (
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddy-resilient/resilient/idempotency"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The first request with an idempotency key is carried to the upstream's
// answer (SPEC §13): once it has been sent, the bounds that end it for
// its client (read, attempt, total, the caller's deadline) answer the
// client, 504 with executed maybe, but do not abandon the upstream. The
// round trip goes on until the upstream answers, within complete_within
// of the sending, and its answer is kept for the repeat, which waits for
// it. Without this, a client whose timeout is shorter than a slow
// provider would be told the gateway gave up, and its repeat would get
// that stored 504 while the provider's real answer came and went.
//
// So that the client can be answered while the round trip goes on, a
// keyed attempt's round trip runs on a goroutine of its own (a carrier),
// and the request's goroutine waits for either its result or the
// watchdog's word that a client-facing bound ran out (detach). Whichever
// comes first decides, once: after a detach the carrier owns the
// attempt (its connection slot, watchdog and context) and the key's
// claim, and ends them when the upstream's answer is in.

// carrier states
const (
	carryRacing int32 = iota
	carryDelivered
	carryDetached
)

// carriedNow counts the exchanges being carried in this process, for
// caddy_resilient_idempotency_carried.
var carriedNow atomic.Int64

// defaultCarryLimit bounds the exchanges carried at once per upstream
// when pool.max_conns does not.
const defaultCarryLimit = 256

// causeCarried ends a carried attempt whose upstream gave no answer
// within complete_within.
var causeCarried = &timeoutCause{OutcomeReadTimeout}

// carrier is the round trip of one keyed attempt.
type carrier struct {
	ex    *exchange
	a     *attempt
	until time.Time // complete_within from the sending
	state atomic.Int32
	wake  chan struct{} // one word: delivered or detached

	res   *http.Response // delivered
	err   error
	cause *timeoutCause // detached: the bound that answered the client
}

func newCarrier(ex *exchange, a *attempt, start time.Time) *carrier {
	return &carrier{ex: ex, a: a, until: start.Add(time.Duration(ex.t.Idempotency.CompleteWithin)), wake: make(chan struct{}, 1)}
}

// roundTrip sends r with rt on the carrier's goroutine and returns its
// result, or nil, nil once the client is to be answered (detached).
func (c *carrier) roundTrip(rt http.RoundTripper, r *http.Request) (*http.Response, error) {
	go func() {
		var res *http.Response
		var err error
		func() {
			defer func() {
				if p := recover(); p != nil {
					res, err = nil, fmt.Errorf("panic in the round trip: %v", p)
				}
			}()
			res, err = rt.RoundTrip(r)
		}()
		c.a.w.roundTripEnded()
		if c.state.CompareAndSwap(carryRacing, carryDelivered) {
			c.res, c.err = res, err
			c.wake <- struct{}{}
			return
		}
		c.ex.carryOn(c, res, err)
	}()
	<-c.wake
	return c.res, c.err
}

// detached reports whether the client is to be answered while the round
// trip goes on.
func (c *carrier) detached() bool { return c.state.Load() == carryDetached }

// detach is the watchdog's: cause, a bound that ends the request for its
// client, ran out. It says whether the attempt is carried on (the
// request's goroutine answers the client) rather than canceled as
// usual: only a request wholly sent, with time left of complete_within,
// and while its upstream carries fewer than its limit. When the round
// trip's result came just now it says so (late): the attempt is not to
// be canceled, its answer is being handed on. Called with the
// watchdog's lock held: it must not block.
func (c *carrier) detach(cause *timeoutCause) (carried, late bool) {
	if c.state.Load() != carryRacing {
		return false, true
	}
	if !c.a.has(flagWritten) || !time.Now().Before(c.until) {
		return false, false
	}
	up := c.ex.up
	if up.carried.Add(1) > up.carryLimit {
		up.carried.Add(-1)
		return false, false // past the limit: abandoned as before, the record keeps the no-answer
	}
	// the cause is the carrier's to read once it sees the detach
	c.cause = cause
	if !c.state.CompareAndSwap(carryRacing, carryDetached) {
		up.carried.Add(-1)
		return false, true
	}
	carriedNow.Add(1)
	up.busy.Add(1) // its state stays while the exchange is carried
	c.wake <- struct{}{}
	return true, false
}

// detachedAttempt ends attempt a of the request, with ticket tk, as its
// client sees it once the watchdog detached its carrier c: a timeout,
// which the breaker counts now (a hanging provider trips it as before).
// The carrier has its connection slot, watchdog and context, and the
// key's claim.
func (ex *exchange) detachedAttempt(a *attempt, tk *ticket, c *carrier, start time.Time) (*http.Response, *attemptResult) {
	at := &a.res
	at.took = time.Since(start)
	at.phases = a.phases()
	at.outcome, at.err = c.cause.outcome, c.cause
	var excluded bool
	at.failed, excluded = ex.t.Breaker.isFailure(at.outcome, 0, at.took)
	tk.report(at.failed, excluded)
	ex.keyed.carried = true
	return nil, at
}

// carryOn finishes the carried exchange on the carrier's goroutine, once
// the round trip returned (res, err): the upstream's answer is read (up
// to max_response, under the read idle bound) and kept for the repeat;
// no answer keeps the outcome its client was given.
func (ex *exchange) carryOn(c *carrier, res *http.Response, err error) {
	a, k, w := c.a, ex.keyed, &c.a.w
	ix := k.ix
	defer func() {
		w.stop()
		w.cancel(nil)
		ex.up.freeSlot()
		ex.up.carried.Add(-1)
		carriedNow.Add(-1)
		ex.up.done()
	}()
	fp := ex.keyFingerprint()
	noAnswer := idempotency.Answer{Status: c.cause.outcome.StatusCode(), Outcome: c.cause.outcome.String(), Whole: true}
	if err != nil {
		k.claim.Keep(fp, noAnswer)
		ex.logCarried(c, 0, "no_answer", cleanError(err))
		return
	}
	a.headers()
	// a 429 or 503 with Retry-After pauses the upstream's bucket, late
	// as it is
	ex.obeyRetryAfter(res)
	if releasingStatus(res.StatusCode) {
		// the upstream says it did nothing: a repeat is sent anew
		res.Body.Close()
		k.claim.Release()
		ex.logCarried(c, res.StatusCode, "released", nil)
		return
	}
	if idle := on(ex.t.Timeouts.Read); idle > 0 {
		w.watchBody(idle)
	} else {
		w.enter(causeCarried, max(time.Until(c.until), time.Second))
	}
	body, whole, rerr := readCarried(res.Body, ix.MaxResponse, w)
	res.Body.Close()
	switch {
	case rerr != nil:
		// cut short, or silent for too long: what the upstream did is not
		// known, as for an answer that never came
		end := OutcomeReset
		if w.idleFire.Load() {
			end = OutcomeReadTimeout
		}
		k.claim.Keep(fp, idempotency.Answer{Status: end.StatusCode(), Outcome: end.String(), Whole: true})
		ex.logCarried(c, res.StatusCode, "no_answer", rerr)
		return
	case !whole || len(res.Trailer) > 0:
		// larger than max_response, or with trailers the record cannot
		// hold: the key is used, its answer not kept
		k.claim.Keep(fp, idempotency.Answer{Status: res.StatusCode, Header: res.Header.Clone()})
		ex.logCarried(c, res.StatusCode, "status", nil)
		return
	}
	k.claim.Keep(fp, idempotency.Answer{Status: res.StatusCode, Header: res.Header.Clone(), Body: body, Whole: true})
	ex.logCarried(c, res.StatusCode, "answer", nil)
}

// readCarried reads body to its end, at most limit bytes, each read under
// w's idle bound. whole is false when the body was larger, or did not
// end well (err says how).
func readCarried(body io.Reader, limit int64, w *watchdog) (b []byte, whole bool, err error) {
	buf := make([]byte, 32<<10)
	for {
		w.bodyReadBegin()
		n, rerr := body.Read(buf)
		w.bodyReadEnd()
		if int64(len(b)+n) > limit {
			return nil, false, nil
		}
		b = append(b, buf[:n]...)
		switch {
		case rerr == io.EOF:
			return b, true, nil
		case rerr != nil:
			return nil, false, rerr
		}
	}
}

// logCarried writes the log entry of a carried exchange's end: how long
// after its sending the upstream answered, and what its record keeps
// (answer, status, no_answer, released).
func (ex *exchange) logCarried(c *carrier, status int, kept string, err error) {
	ce := ex.t.logger.Check(zapcore.InfoLevel, "carried request ended")
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.String("upstream", ex.up.addr),
		zap.String("method", ex.req.Method),
		zap.String("host", ex.req.Host),
		zap.String("path", ex.req.URL.Path),
		zap.String("client_outcome", c.cause.outcome.String()),
		zap.Int("status", status),
		zap.Duration("duration", time.Since(c.a.start)),
		zap.String("kept", kept),
	}
	if err != nil {
		fields = append(fields, zap.String("error", err.Error()))
	}
	ce.Write(fields...)
}
