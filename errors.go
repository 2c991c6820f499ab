package resilient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Outcome is how one proxied request (or one attempt of it) ended.
// Every request that goes through the transport ends in exactly one.
type Outcome uint8

// The outcomes, in the order of the README's table.
const (
	// OutcomeOK: the upstream answered with a status that is not a failure status.
	OutcomeOK Outcome = iota
	// OutcomeUpstreamStatus: the final answer carries a failure status; it is passed through.
	OutcomeUpstreamStatus
	// OutcomeConnectError: DNS failure, connection refused or unreachable.
	OutcomeConnectError
	// OutcomeConnectTimeout: the connect phase (DNS included) timed out.
	OutcomeConnectTimeout
	// OutcomeTLSError: the TLS handshake failed, or the certificate was refused.
	OutcomeTLSError
	// OutcomeTLSTimeout: the TLS handshake timed out.
	OutcomeTLSTimeout
	// OutcomeReset: the connection was closed or reset before response headers.
	OutcomeReset
	// OutcomeWriteTimeout: writing the request to the upstream timed out.
	OutcomeWriteTimeout
	// OutcomeReadTimeout: the upstream was silent for longer than the read timeout.
	OutcomeReadTimeout
	// OutcomeAttemptTimeout: one attempt ran past the attempt timeout.
	OutcomeAttemptTimeout
	// OutcomeTotalTimeout: the request, retries included, ran past the total timeout.
	OutcomeTotalTimeout
	// OutcomeBreakerOpen: the upstream's breaker rejected the request; nothing was sent.
	OutcomeBreakerOpen
	// OutcomePoolTimeout: no connection slot freed up in time; nothing was sent.
	OutcomePoolTimeout
	// OutcomeRateLimited: no rate-limit token in time, or the upstream
	// asked for a pause; nothing was sent.
	OutcomeRateLimited
	// OutcomeCanceled: the client went away.
	OutcomeCanceled
	// OutcomeReplayed: with idempotency, the answer of an earlier
	// request with the same key; nothing was sent.
	OutcomeReplayed
	// OutcomeKeyConflict: with idempotency, the key's first request is
	// in flight, or its answer was not kept; nothing was sent.
	OutcomeKeyConflict
	// OutcomeKeyMismatch: with idempotency, the key was used with
	// another request; nothing was sent.
	OutcomeKeyMismatch
	// OutcomeKeyInvalid: with idempotency, the key is malformed, or
	// missing where required; nothing was sent.
	OutcomeKeyInvalid
	// OutcomeStale: with fallback, the upstream failed and a kept
	// earlier answer was served instead.
	OutcomeStale

	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	OutcomeOK:             "ok",
	OutcomeUpstreamStatus: "upstream_status",
	OutcomeConnectError:   "connect_error",
	OutcomeConnectTimeout: "connect_timeout",
	OutcomeTLSError:       "tls_error",
	OutcomeTLSTimeout:     "tls_timeout",
	OutcomeReset:          "reset",
	OutcomeWriteTimeout:   "write_timeout",
	OutcomeReadTimeout:    "read_timeout",
	OutcomeAttemptTimeout: "attempt_timeout",
	OutcomeTotalTimeout:   "total_timeout",
	OutcomeBreakerOpen:    "breaker_open",
	OutcomePoolTimeout:    "pool_timeout",
	OutcomeRateLimited:    "rate_limited",
	OutcomeCanceled:       "canceled",
	OutcomeReplayed:       "replayed",
	OutcomeKeyConflict:    "key_conflict",
	OutcomeKeyMismatch:    "key_mismatch",
	OutcomeKeyInvalid:     "key_invalid",
	OutcomeStale:          "stale",
}

// String returns the outcome's name as it appears in logs, metrics and placeholders.
func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// ParseOutcome returns the outcome with the given name.
func ParseOutcome(name string) (Outcome, bool) {
	for i, n := range outcomeNames {
		if n == name {
			return Outcome(i), true
		}
	}
	return 0, false
}

// StatusCode is the status the client gets for a request that ended in o.
// For OutcomeOK and OutcomeUpstreamStatus the upstream's own status is
// passed through, so StatusCode returns 0.
func (o Outcome) StatusCode() int {
	switch o {
	case OutcomeConnectError, OutcomeTLSError, OutcomeReset:
		return http.StatusBadGateway
	case OutcomeConnectTimeout, OutcomeTLSTimeout, OutcomeWriteTimeout,
		OutcomeReadTimeout, OutcomeAttemptTimeout, OutcomeTotalTimeout:
		return http.StatusGatewayTimeout
	case OutcomeBreakerOpen, OutcomePoolTimeout:
		return http.StatusServiceUnavailable
	case OutcomeRateLimited:
		return http.StatusTooManyRequests
	case OutcomeCanceled:
		return 499
	case OutcomeKeyConflict:
		return http.StatusConflict
	case OutcomeKeyMismatch:
		return http.StatusUnprocessableEntity
	case OutcomeKeyInvalid:
		return http.StatusBadRequest
	}
	return 0 // the upstream's status, or the stored one (replayed)
}

// IsTimeout reports whether o is one of the timeout outcomes.
func (o Outcome) IsTimeout() bool {
	switch o {
	case OutcomeConnectTimeout, OutcomeTLSTimeout, OutcomeWriteTimeout,
		OutcomeReadTimeout, OutcomeAttemptTimeout, OutcomeTotalTimeout:
		return true
	}
	return false
}

// Sentinel errors, one per failing outcome, for errors.Is:
//
//	if errors.Is(err, resilient.ErrBreakerOpen) { … }
var (
	ErrConnect        = errors.New("upstream connect failed")
	ErrConnectTimeout = errors.New("upstream connect timed out")
	ErrTLS            = errors.New("upstream TLS handshake failed")
	ErrTLSTimeout     = errors.New("upstream TLS handshake timed out")
	ErrReset          = errors.New("upstream connection closed before response headers")
	ErrWriteTimeout   = errors.New("writing the request to the upstream timed out")
	ErrReadTimeout    = errors.New("reading from the upstream timed out")
	ErrAttemptTimeout = errors.New("upstream attempt timed out")
	ErrTotalTimeout   = errors.New("request timed out")
	ErrBreakerOpen    = errors.New("upstream circuit breaker is open")
	ErrPoolTimeout    = errors.New("no free connection slot for the upstream")
	ErrRateLimited    = errors.New("upstream rate limit reached")
	ErrCanceled       = errors.New("client canceled the request")
)

var outcomeErrors = [numOutcomes]error{
	OutcomeConnectError:   ErrConnect,
	OutcomeConnectTimeout: ErrConnectTimeout,
	OutcomeTLSError:       ErrTLS,
	OutcomeTLSTimeout:     ErrTLSTimeout,
	OutcomeReset:          ErrReset,
	OutcomeWriteTimeout:   ErrWriteTimeout,
	OutcomeReadTimeout:    ErrReadTimeout,
	OutcomeAttemptTimeout: ErrAttemptTimeout,
	OutcomeTotalTimeout:   ErrTotalTimeout,
	OutcomeBreakerOpen:    ErrBreakerOpen,
	OutcomePoolTimeout:    ErrPoolTimeout,
	OutcomeRateLimited:    ErrRateLimited,
	OutcomeCanceled:       ErrCanceled,
}

// Error is the error the transport returns for a request that got no
// usable upstream response. It is always wrapped in a
// caddyhttp.HandlerError carrying the outcome's status, so handle_errors
// can render it; errors.As finds it through that wrapper.
type Error struct {
	// Outcome says how the request ended.
	Outcome Outcome
	// Upstream is the upstream's dial address (host:port).
	Upstream string
	// Attempts is the number of attempts made (0 when nothing was sent).
	Attempts int
	// RetryAfter, when positive, is how long until a new request could
	// succeed (set for breaker_open, pool_timeout and rate_limited).
	RetryAfter time.Duration
	// NeverSent reports that no byte of the request reached the upstream.
	NeverSent bool
	// Err is the underlying cause, if any.
	Err error

	// movable: nothing was sent and the request body is untouched, so
	// the request may go, whole, to another upstream
	movable bool
}

// Error implements error. It names the outcome and the upstream, never
// any part of the request.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Outcome.String())
	if e.Upstream != "" {
		b.WriteString(" (")
		b.WriteString(e.Upstream)
		b.WriteString(")")
	}
	if c := e.cause(); c != "" {
		b.WriteString(": ")
		b.WriteString(c)
	}
	return b.String()
}

// cause is the message of what went wrong, without the outcome and
// upstream that Error adds.
func (e *Error) cause() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	if s := outcomeErrors[e.Outcome]; s != nil {
		return s.Error()
	}
	return ""
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrBreakerOpen) and friends work; a canceled
// request also matches context.Canceled, which Caddy's reverse proxy
// turns into a 499 without blaming the upstream.
func (e *Error) Is(target error) bool {
	if target == outcomeErrors[e.Outcome] && target != nil {
		return true
	}
	return e.Outcome == OutcomeCanceled && target == context.Canceled
}

// As lets errors.As find a reverseproxy.DialError when nothing was sent
// and the request body was not read, so that Caddy's own lb_retries may
// move any request, whatever its method, to another upstream: a request
// that never left cannot be duplicated. A request whose body was read
// cannot be moved: Caddy would send it on without its body.
func (e *Error) As(target any) bool {
	if de, ok := target.(*reverseproxy.DialError); ok && e.movable {
		*de = reverseproxy.NewDialError(e)
		return true
	}
	return false
}

// hideDialError returns err with any reverseproxy.DialError in it out
// of errors.As's reach (the message stays): the Error's own As decides
// whether a request may move to another upstream.
func hideDialError(err error) error {
	var de reverseproxy.DialError
	if err == nil || !errors.As(err, &de) {
		return err
	}
	return dialHidden{err.Error()}
}

// dialHidden is an error that says what a dial error said, and is none.
type dialHidden struct{ msg string }

func (e dialHidden) Error() string { return e.msg }

// handlerError wraps e for Caddy with the outcome's status code. It is
// built here rather than with caddyhttp.Error, whose stack trace of the
// caller costs more than a refusal by an open breaker itself; the trace
// would only ever name this function.
func (e *Error) handlerError() error {
	return caddyhttp.HandlerError{
		ID:         errorID(),
		StatusCode: e.Outcome.StatusCode(),
		Err:        e,
		Trace:      "resilient.(*Transport).RoundTrip",
	}
}

// errorID returns an error ID as Caddy's are: 9 characters, one case.
func errorID() string {
	const dict = "abcdefghijkmnpqrstuvwxyz23456789"
	var b [9]byte
	for i, x := 0, rand.Uint64(); i < len(b); i, x = i+1, x>>5 {
		b[i] = dict[x&31]
	}
	return string(b[:])
}

// timeoutCause is the cancellation cause of an attempt's context when
// one of our own timers fired.
type timeoutCause struct{ outcome Outcome }

func (c *timeoutCause) Error() string { return outcomeErrors[c.outcome].Error() }
func (c *timeoutCause) Timeout() bool { return true }

// Our timer causes, allocated once.
var (
	causeWrite   = &timeoutCause{OutcomeWriteTimeout}
	causeRead    = &timeoutCause{OutcomeReadTimeout}
	causeAttempt = &timeoutCause{OutcomeAttemptTimeout}
	causeTotal   = &timeoutCause{OutcomeTotalTimeout}
)

// classify names the outcome of a failed attempt from its error, what
// the attempt's trace saw, and the cause its context was canceled with.
func classify(err error, a *attempt, cause error) Outcome {
	var tc *timeoutCause
	if errors.As(cause, &tc) {
		return tc.outcome
	}
	if a.has(flagResent) || errors.Is(cause, errResent) {
		// the connection that carried the request closed without an
		// answer, and net/http's re-send of it was stopped
		return OutcomeReset
	}
	if cause != nil {
		// the client went away, its body failed, or Caddy is shutting
		// the request down
		return OutcomeCanceled
	}
	if errors.Is(err, context.Canceled) {
		return OutcomeCanceled
	}
	if isTLSError(err) {
		if isTimeout(err) {
			return OutcomeTLSTimeout
		}
		return OutcomeTLSError
	}
	var de reverseproxy.DialError
	if errors.As(err, &de) || !a.gotConn() {
		// Caddy's DialError hides its cause from errors.As: its text
		// still tells a timeout (DNS or connect)
		if isTimeout(err) || strings.Contains(err.Error(), "timeout") {
			return OutcomeConnectTimeout
		}
		return OutcomeConnectError
	}
	if isTimeout(err) {
		// a timeout inside net/http itself, e.g. response_header_timeout
		return OutcomeReadTimeout
	}
	return OutcomeReset
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// isTLSError recognises handshake and certificate failures, including
// the ones net/http reports only as text.
func isTLSError(err error) bool {
	var (
		rhe *tls.RecordHeaderError
		ae  tls.AlertError
		cve *tls.CertificateVerificationError
		uae x509.UnknownAuthorityError
		he  x509.HostnameError
		cie x509.CertificateInvalidError
	)
	if errors.As(err, &rhe) || errors.As(err, &ae) || errors.As(err, &cve) ||
		errors.As(err, &uae) || errors.As(err, &he) || errors.As(err, &cie) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "TLS handshake") || strings.Contains(s, "tls: ")
}
