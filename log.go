package resilient

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// exchangeKey holds, in a request's replacer, the latest exchange of
// the request: Caddy's lb_retries may send one request through the
// transport several times, and the placeholders tell of the last.
const exchangeKey = "resilient.exchange"

// providePlaceholders makes repl provide {http.resilient.*} from ex, and
// returns the request's exchange before ex (lb_retries), if any:
// each value is read from the exchange as it stands when it is asked
// for, so that none is ever unset, and a request pays for one provider
// (added by its first exchange) rather than a static value per
// placeholder (each a write into the replacer's map, which grows).
func providePlaceholders(repl *caddy.Replacer, ex *exchange) (prev *exchange) {
	if v, ok := repl.Get(exchangeKey); ok {
		prev, _ = v.(*exchange)
	} else {
		repl.Map(func(key string) (any, bool) {
			if !strings.HasPrefix(key, "http.resilient.") {
				return nil, false
			}
			if v, ok := repl.Get(exchangeKey); ok {
				return v.(*exchange).placeholder(key)
			}
			return nil, false
		})
	}
	repl.Set(exchangeKey, ex)
	return prev
}

// String hides the exchange from a {resilient.exchange} placeholder.
func (ex *exchange) String() string { return "" }

// placeholder returns the value of {http.resilient.*} key.
func (ex *exchange) placeholder(key string) (any, bool) {
	name, ok := strings.CutPrefix(key, "http.resilient.")
	if !ok {
		return nil, false
	}
	// values boxed once, not on every request
	switch name {
	case "outcome":
		return outcomeValues[ex.outcome], true
	case "attempts":
		return ex.attempts(), true
	case "upstream":
		return ex.up.addrValue, true
	case "breaker":
		return stateValue(ex.up.breaker.state()), true
	case "executed":
		return executedValues[ex.executed()], true
	case "idempotency":
		if ex.keyValue == nil {
			return keyNotManaged, true
		}
		return ex.keyValue, true
	case "retry_after":
		if ra := ex.retryAfter(ex.err); ra > 0 {
			return ra, true
		}
		return noValue, true
	case "error":
		switch e := ex.err; {
		case e == nil:
			return noValue, true
		case e.Err == nil:
			return causeValues[e.Outcome], true
		default:
			return e.cause(), true
		}
	case "fallback":
		if ex.fb != nil && ex.fb.result != nil {
			return ex.fb.result, true
		}
		return noValue, true
	case "problem":
		if e := ex.err; e != nil {
			// the answer handle_errors writes: one problem schema for
			// every answer of the gateway's own
			return string(problemJSON(ex.problem(e.Outcome.StatusCode(), "", "", "", ex.retryAfter(e)))), true
		}
		return noValue, true
	}
	return nil, false
}

// noValue is the empty placeholder value, boxed once.
var noValue any = ""

// retryAfter returns the whole seconds after which a repeat of the
// request could succeed, 0 when nothing says: the refusal's own
// (breaker_open, pool_timeout, rate_limited), the key conflict's, or
// the upstream answer's Retry-After.
func (ex *exchange) retryAfter(e *Error) int64 {
	switch {
	case e != nil && e.RetryAfter > 0:
		return retryAfterSecs(e.RetryAfter)
	case e != nil || ex.final == nil:
		return 0
	}
	if ex.final.retryAfter > 0 {
		return retryAfterSecs(ex.final.retryAfter)
	}
	return 0
}

// outcomeValues are the outcomes' names, boxed for the replacer.
var outcomeValues = func() (v [numOutcomes]any) {
	for o := range v {
		v[o] = Outcome(o).String()
	}
	return v
}()

// causeValues are the messages of errors with no cause of their own
// (breaker_open, pool_timeout, ...), boxed for the replacer.
var causeValues = func() (v [numOutcomes]any) {
	for o := range v {
		if err := outcomeErrors[o]; err != nil {
			v[o] = err.Error()
		}
	}
	return v
}()

var stateValues = map[string]any{"closed": "closed", "half_open": "half_open", "open": "open"}

func stateValue(s string) any { return stateValues[s] }

// log writes the request's one log entry: info when it was retried, did
// not end ok, or carries a caller's deadline that did not read (so that
// an operator sees callers sending junk); debug otherwise. It names no
// header value, credential or query string.
func (ex *exchange) log(e *Error) {
	lvl := zapcore.DebugLevel
	var suppressed uint64
	sampled := false
	switch {
	case ex.outcome.refusal():
		// by the thousand per second when a provider is down: one a
		// second at info, the rest at debug; the metrics count them all
		lvl, suppressed, sampled = ex.up.refusals[refusalIndex(ex.outcome)].level(time.Now())
	case len(ex.tries) > 1 || ex.outcome != OutcomeOK || ex.deadlineInvalid:
		lvl = zapcore.InfoLevel
	}
	c := ex.t.logger.Check(lvl, "request")
	if c == nil {
		return
	}
	status := 0
	if ex.final != nil {
		status = ex.final.status
	}
	if e != nil {
		status = ex.outcome.StatusCode()
	}
	fields := []zap.Field{
		zap.String("upstream", ex.up.addr),
		zap.String("method", ex.req.Method),
		zap.String("host", ex.req.Host),
		zap.String("path", ex.req.URL.Path),
		zap.String("outcome", ex.outcome.String()),
		zap.Int("status", status),
		zap.Int("attempts", ex.attempts()),
		zap.Duration("duration", time.Since(ex.start)),
		zap.String("idempotent", ex.idem.String()),
		zap.String("breaker", ex.up.breaker.state()),
		zap.Array("tries", tries(ex.tries)),
	}
	if ex.final != nil {
		fields = append(fields, zap.Object("phases", ex.final.phases))
	}
	if ex.deadlineInvalid {
		fields = append(fields, zap.Bool("deadline_invalid", true))
	}
	if ex.keyVerdict != "" {
		fields = append(fields, zap.String("idempotency", ex.keyVerdict))
	}
	if ex.fb != nil && ex.fb.result != nil {
		fields = append(fields, zap.String("fallback", ex.fb.result.(string)))
	}
	if ex.denied != denyNone {
		fields = append(fields, zap.String("retry_denied", ex.denied.String()))
	}
	if e != nil && e.Err != nil {
		fields = append(fields, zap.String("error", e.Err.Error()))
	}
	if sampled {
		fields = append(fields, zap.Uint64("suppressed", suppressed))
	}
	c.Write(fields...)
}

// refusal reports whether o turns a request away with nothing sent.
func (o Outcome) refusal() bool {
	return o == OutcomeBreakerOpen || o == OutcomePoolTimeout || o == OutcomeRateLimited
}

func refusalIndex(o Outcome) int {
	switch o {
	case OutcomePoolTimeout:
		return 1
	case OutcomeRateLimited:
		return 2
	}
	return 0
}

// refusalLog samples the log entries of one kind of refusal of one
// upstream: at most one a second at info, which carries how many went
// to debug since.
type refusalLog struct {
	last       atomic.Int64 // unix nanos of the last info entry
	suppressed atomic.Uint64
}

// level returns the level of the next entry, and for an info entry the
// number suppressed since the last one.
func (r *refusalLog) level(now time.Time) (zapcore.Level, uint64, bool) {
	n, last := now.UnixNano(), r.last.Load()
	if n-last >= int64(time.Second) && r.last.CompareAndSwap(last, n) {
		return zapcore.InfoLevel, r.suppressed.Swap(0), true
	}
	r.suppressed.Add(1)
	return zapcore.DebugLevel, 0, false
}

type tries []try

// MarshalLogArray implements zapcore.ArrayMarshaler.
func (ts tries) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, t := range ts {
		if err := enc.AppendObject(t); err != nil {
			return err
		}
	}
	return nil
}

// MarshalLogObject implements zapcore.ObjectMarshaler.
func (t try) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("outcome", t.outcome.String())
	if t.status != 0 {
		enc.AddInt("status", t.status)
	}
	enc.AddDuration("duration", t.took)
	enc.AddDuration("wait", t.wait)
	if t.hedge {
		enc.AddBool("hedge", true)
	}
	return nil
}

// MarshalLogObject implements zapcore.ObjectMarshaler.
func (p phaseTimes) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddDuration("connect", p.connect)
	enc.AddDuration("write", p.write)
	enc.AddDuration("wait", p.wait)
	return nil
}
