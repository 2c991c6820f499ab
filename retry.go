package resilient

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cenkalti/backoff/v4"
)

// Retry decides which failed attempts are tried again, and when.
// Retries stay on the upstream the request was sent to; Caddy's own
// lb_retries moves requests between upstreams.
type Retry struct {
	// Disabled switches retries off (`retry off`). Default: `false`.
	Disabled bool `json:"disabled,omitempty"`

	// Tries in all, the first one included; 1 means no retries.
	// Default: `3`.
	Attempts int `json:"attempts,omitempty"`

	// The waits between tries: exponential (x2) from First to Max, with
	// +-50% jitter. Default: `{"first":"25ms","max":"1s"}`.
	Backoff *Backoff `json:"backoff,omitempty"`

	// Which failures are retried: `connect_error` (connect_timeout too),
	// `tls_error` (tls_timeout too), `reset`, `timeout` (write, read and
	// attempt timeouts), status codes such as `503` and classes such as
	// `5xx`. Default: `["connect_error","tls_error","reset","408","429","502","503","504"]`.
	On []string `json:"on,omitempty"`

	// Methods treated as idempotent. Default:
	// `["GET","HEAD","OPTIONS","TRACE","PUT","DELETE"]`.
	Methods []string `json:"methods,omitempty"`

	// A request carrying this header is retried like an idempotent one;
	// `off` disables it. Default: `Idempotency-Key`.
	IdempotencyHeader string `json:"idempotency_header,omitempty"`

	// Give requests whose method is not idempotent, and which lack the
	// idempotency header, a random key in that header, so they can be
	// retried and the upstream can deduplicate. Default: `false`.
	GenerateIdempotencyKey bool `json:"generate_idempotency_key,omitempty"`

	// Honour a Retry-After header on 429 and 503 up to this long; an
	// upstream that asks for longer is not retried and its answer is
	// passed on at once. A negative value ignores Retry-After.
	// Default: `10s`.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// Bounds retries to each upstream, across all requests.
	// Default: `{"ratio":0.2,"min_per_second":10}`.
	Budget *Budget `json:"budget,omitempty"`

	// Request bodies up to this many bytes are buffered so they can be
	// sent again; larger ones stream through and are not retried.
	// Default: `1048576` (1MiB).
	MaxBody int64 `json:"max_body,omitempty"`

	on        [numOutcomes]bool
	onStatus  []statusMatch
	keyHeader string // canonical; "" when off
}

// Backoff holds the waits between tries.
type Backoff struct {
	// The wait before the first retry. Default: `25ms`.
	First caddy.Duration `json:"first,omitempty"`
	// The longest wait. Default: `1s`.
	Max caddy.Duration `json:"max,omitempty"`
}

// denial is why a retry that `on` asked for was refused.
type denial uint8

const (
	denyNone denial = iota
	denyUnsafe
	denyBudget
	denyDeadline
	denyBody
	denyRetryAfter
	denyBreaker
	denyRateLimit
	numDenials
)

var denialNames = [numDenials]string{"", "unsafe", "budget", "deadline", "body", "retry_after", "breaker", "rate_limit"}

func (d denial) String() string { return denialNames[d] }

var defaultOn = []string{"connect_error", "tls_error", "reset", "408", "429", "502", "503", "504"}

var defaultMethods = []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}

// retryConditions are the words `on` takes besides status codes.
var retryConditions = map[string][]Outcome{
	"connect_error": {OutcomeConnectError, OutcomeConnectTimeout},
	"tls_error":     {OutcomeTLSError, OutcomeTLSTimeout},
	"reset":         {OutcomeReset},
	"timeout":       {OutcomeWriteTimeout, OutcomeReadTimeout, OutcomeAttemptTimeout},
}

func (r *Retry) provision() error {
	if r.Attempts == 0 {
		r.Attempts = 3
	}
	if r.Disabled {
		r.Attempts = 1
	}
	if r.Backoff == nil {
		r.Backoff = new(Backoff)
	}
	if r.Backoff.First == 0 {
		r.Backoff.First = caddy.Duration(25 * time.Millisecond)
	}
	if r.Backoff.Max == 0 {
		r.Backoff.Max = caddy.Duration(time.Second)
	}
	if r.On == nil {
		r.On = defaultOn
	}
	if r.Methods == nil {
		r.Methods = slices.Clone(defaultMethods)
	}
	for i, m := range r.Methods {
		r.Methods[i] = strings.ToUpper(m)
	}
	switch r.IdempotencyHeader {
	case "":
		r.keyHeader = "Idempotency-Key"
	case "off":
	default:
		r.keyHeader = http.CanonicalHeaderKey(r.IdempotencyHeader)
	}
	if r.RetryAfter == 0 {
		r.RetryAfter = caddy.Duration(10 * time.Second)
	}
	if r.Budget == nil {
		r.Budget = new(Budget)
	}
	if r.Budget.Ratio == nil {
		v := 0.2
		r.Budget.Ratio = &v
	}
	if r.Budget.MinPerSecond == nil {
		v := 10
		r.Budget.MinPerSecond = &v
	}
	if r.MaxBody == 0 {
		r.MaxBody = 1 << 20
	}
	r.onStatus = r.onStatus[:0]
	for _, c := range r.On {
		if outs, ok := retryConditions[c]; ok {
			for _, o := range outs {
				r.on[o] = true
			}
			continue
		}
		sm, err := parseFailureMatch(c)
		if err != nil {
			return fmt.Errorf("on: %v", err)
		}
		r.onStatus = append(r.onStatus, sm)
	}
	return nil
}

// maxAttempts bounds retry.attempts: past a handful, retries only
// multiply the load on an upstream in trouble.
const maxAttempts = 10

func (r *Retry) validate() error {
	if r.Attempts < 1 || r.Attempts > maxAttempts {
		return fmt.Errorf("attempts must be a whole number from 1 to %d, got %d", maxAttempts, r.Attempts)
	}
	if r.Backoff.First < 0 || r.Backoff.Max < 0 {
		return fmt.Errorf("backoff waits must be > 0")
	}
	if r.Backoff.Max < r.Backoff.First {
		return fmt.Errorf("backoff: longest wait %v is shorter than the first %v",
			time.Duration(r.Backoff.Max), time.Duration(r.Backoff.First))
	}
	for _, m := range r.Methods {
		if !isToken(m) {
			return fmt.Errorf("methods: %q is not an HTTP method", m)
		}
	}
	if r.keyHeader != "" && !isToken(r.keyHeader) {
		return fmt.Errorf("idempotency_header: %q is not a header name", r.IdempotencyHeader)
	}
	if ratio := *r.Budget.Ratio; !validRatio(ratio) {
		return fmt.Errorf("budget: ratio must be from 0 to 1000, got %v", ratio)
	}
	if n := *r.Budget.MinPerSecond; n < 0 || n > maxMinPerSecond {
		return fmt.Errorf("budget: min_per_second must be from 0 to %d, got %d", maxMinPerSecond, n)
	}
	if r.MaxBody < 0 {
		return fmt.Errorf("max_body must be > 0, got %d", r.MaxBody)
	}
	return nil
}

// validRatio bounds the budget ratio; NaN is refused too.
func validRatio(f float64) bool { return f >= 0 && f <= 1000 }

// matches reports whether a failed attempt is one `on` retries.
func (r *Retry) matches(o Outcome, status int) bool {
	if o == OutcomeUpstreamStatus || o == OutcomeOK {
		for _, sm := range r.onStatus {
			if sm.match(status) {
				return true
			}
		}
		return false
	}
	return r.on[o]
}

// statusMatch is a status code (503) or a class (5xx, stored as 5).
type statusMatch int

func parseStatusMatch(s string) (statusMatch, error) {
	if len(s) == 3 && s[1:] == "xx" && s[0] >= '1' && s[0] <= '5' {
		return statusMatch(s[0] - '0'), nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 || n > 599 {
		return 0, fmt.Errorf("%q is not a status code (100-599), a class such as 5xx, or one of connect_error, tls_error, reset, timeout", s)
	}
	return statusMatch(n), nil
}

// parseFailureMatch is parseStatusMatch for the statuses that mean the
// upstream failed: only 4xx and 5xx. Retrying on 2xx would send every
// successful request `attempts` times; counting one as a failure would
// trip the breaker on a healthy upstream.
func parseFailureMatch(s string) (statusMatch, error) {
	sm, err := parseStatusMatch(s)
	if err != nil {
		return 0, err
	}
	if (sm < 10 && sm < 4) || (sm >= 10 && sm < 400) {
		return 0, fmt.Errorf("%q is not a failure: only 4xx and 5xx statuses can be", s)
	}
	return sm, nil
}

func (m statusMatch) match(status int) bool {
	if m < 10 {
		return status/100 == int(m)
	}
	return status == int(m)
}

// idemKind is why a request may be sent more than once.
type idemKind uint8

const (
	idemNo idemKind = iota
	idemMethod
	idemKey
	idemGenerated
)

func (i idemKind) String() string {
	return [...]string{"no", "method", "key", "generated"}[i]
}

// classify says whether req may be sent more than once. With
// generate_idempotency_key it adds a fresh key to an unsafe request,
// and returns the headers to send.
func (r *Retry) classify(req *http.Request) (idemKind, http.Header) {
	if slices.Contains(r.Methods, req.Method) {
		return idemMethod, req.Header
	}
	if r.keyHeader == "" {
		return idemNo, req.Header
	}
	if req.Header.Get(r.keyHeader) != "" {
		return idemKey, req.Header
	}
	if !r.GenerateIdempotencyKey || r.Attempts < 2 {
		return idemNo, req.Header
	}
	h := req.Header.Clone()
	h.Set(r.keyHeader, newIdempotencyKey())
	return idemGenerated, h
}

// newIdempotencyKey returns 128 random bits, hex-encoded.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// newBackoff returns the backoff for one request; ExponentialBackOff
// is not safe for concurrent use, so each request has its own.
func (r *Retry) newBackoff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     time.Duration(r.Backoff.First),
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         time.Duration(r.Backoff.Max),
		MaxElapsedTime:      0, // the total timeout bounds the request
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	return b
}

// maxRetryAfter stands for an ask longer than any duration: an
// all-digit Retry-After too large for an integer is a very long ask,
// not junk.
const maxRetryAfter = time.Duration(1<<63 - 1)

// parseRetryAfter reads a Retry-After value, delta-seconds or HTTP-date,
// relative to now. ok is false when it is missing or malformed.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// retryWait decides whether the attempt at, which returned res (nil on
// error), is tried again, and after how long. A refused retry that `on`
// asked for comes with the reason.
func (ex *exchange) retryWait(res *http.Response, at *attemptResult, now time.Time) (time.Duration, denial, bool) {
	r := ex.t.Retry
	if len(ex.tries)-ex.hedges >= r.Attempts || at.noRetry || !r.matches(at.outcome, at.status) {
		return 0, denyNone, false
	}
	switch k := ex.keyed; {
	case k != nil:
		// one execution per key: a managed request is sent again only
		// when no attempt may have made the upstream act (nothing sent,
		// or it answered 408 425 429 503), whatever idempotency_header
		// says; the key stays claimed meanwhile
		if k.acted || executedBy(at) != executedNo {
			return 0, denyUnsafe, false
		}
	case ex.idem == idemNo && !at.neverSent:
		// it may have reached the upstream: never send it twice
		return 0, denyUnsafe, false
	}
	if ex.body != nil && !ex.body.replayable() {
		return 0, denyBody, false
	}
	if ex.bo == nil {
		ex.bo = r.newBackoff()
	}
	wait := ex.bo.NextBackOff()
	paced := false
	if res != nil && r.RetryAfter > 0 &&
		(at.status == http.StatusTooManyRequests || at.status == http.StatusServiceUnavailable) {
		if ra, ok := parseRetryAfter(res.Header.Get("Retry-After"), now); ok {
			if ra > time.Duration(r.RetryAfter) {
				return 0, denyRetryAfter, false
			}
			if ra >= wait {
				wait, paced = ra, true
			}
		}
	}
	if totalAt := ex.totalDeadline(); !totalAt.IsZero() && !now.Add(wait).Before(totalAt) {
		return 0, denyDeadline, false
	}
	if paced {
		// the upstream set the pace: the budget, there to keep retries
		// from piling onto an upstream in trouble, does not refuse it
		ex.share = ex.up.budget.count(now)
	} else if sh, ok := ex.up.budget.allow(now); ok {
		ex.share = sh
	} else {
		return 0, denyBudget, false
	}
	return wait, denyNone, true
}

// settleShare ends the retry budget's hold on the retry that just ended
// as at says (nil: it was never sent): one that did not fail gives its
// share back, so the budget is spent by the retries that fail.
func (ex *exchange) settleShare(at *attemptResult) {
	sh := ex.share
	if sh == (share{}) {
		return
	}
	ex.share = share{}
	if at == nil || at.outcome == OutcomeCanceled || (!at.failed && !ex.t.Retry.matches(at.outcome, at.status)) {
		ex.up.budget.giveBack(sh)
	}
}
