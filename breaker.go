package resilient

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
)

// Breaker configures the circuit breaker kept for each upstream. It
// trips on a failure ratio over a rolling window, or on a run of
// consecutive failures; while open, requests fail at once with
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

	// Trip after this many failures in a row, whatever the ratio; 0
	// disables this rule. Default: `5`.
	ConsecutiveFailures *int `json:"consecutive_failures,omitempty"`

	// The rolling window the ratio is computed over. Default: `10s`.
	Window caddy.Duration `json:"window,omitempty"`

	// How long the breaker stays open before it lets probes through
	// (half-open). Default: `10s`.
	OpenFor caddy.Duration `json:"open_for,omitempty"`

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
	if b.OpenFor == 0 {
		b.OpenFor = caddy.Duration(10 * time.Second)
	}
	if b.HalfOpenRequests == 0 {
		b.HalfOpenRequests = 3
	}
	if b.FailureStatus == nil {
		b.FailureStatus = defaultFailureStatus
	}
	b.failureStatus = b.failureStatus[:0]
	for _, s := range b.FailureStatus {
		sm, err := parseStatusMatch(s)
		if err != nil {
			return fmt.Errorf("failure_status: %q is not a status code (100-599) or a class such as 5xx", s)
		}
		b.failureStatus = append(b.failureStatus, sm)
	}
	return nil
}

func (b *Breaker) validate() error {
	if b.FailureRatio <= 0 || b.FailureRatio > 1 {
		return fmt.Errorf("failure_ratio must be > 0 and <= 1, got %v", b.FailureRatio)
	}
	if b.MinRequests < 1 {
		return fmt.Errorf("min_requests must be >= 1, got %d", b.MinRequests)
	}
	if *b.ConsecutiveFailures < 0 {
		return fmt.Errorf("consecutive_failures must be >= 0, got %d", *b.ConsecutiveFailures)
	}
	if b.Window <= 0 {
		return fmt.Errorf("window must be > 0, got %v", time.Duration(b.Window))
	}
	if b.OpenFor <= 0 {
		return fmt.Errorf("open_for must be > 0, got %v", time.Duration(b.OpenFor))
	}
	if b.HalfOpenRequests < 1 {
		return fmt.Errorf("half_open_requests must be >= 1, got %d", b.HalfOpenRequests)
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

// key identifies the breaker settings, so a reload that keeps them keeps
// the breaker's state.
func (b *Breaker) key() string {
	return fmt.Sprintf("%v|%d|%d|%v|%v|%d|%s|%v", b.FailureRatio, b.MinRequests,
		*b.ConsecutiveFailures, time.Duration(b.Window), time.Duration(b.OpenFor),
		b.HalfOpenRequests, strings.Join(b.FailureStatus, ","), time.Duration(b.SlowCall))
}

// breakers holds every breaker in use, across config reloads, keyed by
// upstream and settings.
var breakers = caddy.NewUsagePool()

// breaker is the circuit breaker of one upstream.
type breaker struct {
	upstream string
	cfg      *Breaker
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	logger   atomic.Pointer[zap.Logger]

	// written under the gobreaker lock, in its hooks; read anywhere
	openedAt   atomic.Int64 // unix nanos of the last move to open
	lastCounts atomic.Pointer[gobreaker.Counts]

	// operator overrides from the admin API
	mu          sync.Mutex
	forced      forceMode
	forcedUntil time.Time
}

type forceMode uint8

const (
	forceNone forceMode = iota
	forceOpen
	forceClosed
)

// errExcluded tells gobreaker a result counts neither way.
var errExcluded = errors.New("excluded")

// errFailure tells gobreaker a result is a failure.
var errFailure = errors.New("failure")

// acquireBreaker returns the shared breaker for upstream under cfg,
// creating it on first use. Each call must be paired with release.
func acquireBreaker(cfg *Breaker, upstream string, logger *zap.Logger) *breaker {
	key := upstream + "|" + cfg.key()
	v, _, _ := breakers.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newBreaker(cfg, upstream), nil
	})
	b := v.(*breaker)
	b.logger.Store(logger)
	return b
}

func newBreaker(cfg *Breaker, upstream string) *breaker {
	b := &breaker{upstream: upstream, cfg: cfg}
	window := time.Duration(cfg.Window)
	ratio, minReq, consec := cfg.FailureRatio, uint32(cfg.MinRequests), uint32(*cfg.ConsecutiveFailures)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         upstream,
		MaxRequests:  uint32(cfg.HalfOpenRequests),
		Interval:     window,
		BucketPeriod: window / 10,
		Timeout:      time.Duration(cfg.OpenFor),
		ReadyToTrip: func(c gobreaker.Counts) bool {
			b.lastCounts.Store(&c)
			if consec > 0 && c.ConsecutiveFailures >= consec {
				return true
			}
			total := c.TotalSuccesses + c.TotalFailures
			return total >= minReq && float64(c.TotalFailures) >= ratio*float64(total)
		},
		OnStateChange: b.onStateChange,
		IsExcluded:    func(err error) bool { return err == errExcluded },
	})
	return b
}

// onStateChange runs under the gobreaker lock: it must not call back
// into the breaker.
func (b *breaker) onStateChange(_ string, from, to gobreaker.State) {
	if to == gobreaker.StateOpen {
		b.openedAt.Store(time.Now().UnixNano())
	}
	logger := b.logger.Load()
	if logger == nil {
		return
	}
	fields := []zap.Field{
		zap.String("upstream", b.upstream),
		zap.String("from", stateName(from)),
		zap.String("to", stateName(to)),
	}
	if c := b.lastCounts.Load(); c != nil && to == gobreaker.StateOpen && from == gobreaker.StateClosed {
		fields = append(fields,
			zap.Uint32("requests", c.Requests),
			zap.Uint32("failures", c.TotalFailures),
			zap.Uint32("consecutive_failures", c.ConsecutiveFailures))
	}
	logger.Warn("breaker state changed", fields...)
}

// Destruct implements caddy.Destructor; a breaker holds nothing to free.
func (b *breaker) Destruct() error { return nil }

func (b *breaker) release() {
	_, _ = breakers.Delete(b.upstream + "|" + b.cfg.key())
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
	switch mode, _ := b.override(time.Now()); mode {
	case forceOpen:
		return "open"
	case forceClosed:
		return "closed"
	}
	return stateName(b.cb.State())
}

// override returns the operator override in force at now.
func (b *breaker) override(now time.Time) (forceMode, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.forced == forceOpen && !b.forcedUntil.IsZero() && !now.Before(b.forcedUntil) {
		b.forced, b.forcedUntil = forceNone, time.Time{}
	}
	return b.forced, b.forcedUntil
}

// ticket reports the result of one admitted request to the breaker;
// it must be called exactly once.
type ticket func(failure, excluded bool)

// allow asks whether a request may go to the upstream. When it may not,
// it returns how long until the breaker lets probes through.
func (b *breaker) allow() (ticket, time.Duration, bool) {
	if b == nil {
		return noTicket, 0, true
	}
	now := time.Now()
	switch mode, until := b.override(now); mode {
	case forceOpen:
		if until.IsZero() {
			return nil, time.Duration(b.cfg.OpenFor), false
		}
		return nil, until.Sub(now), false
	case forceClosed:
		return noTicket, 0, true
	}
	done, err := b.cb.Allow()
	if err != nil {
		wait := time.Duration(b.cfg.OpenFor) - now.Sub(time.Unix(0, b.openedAt.Load()))
		if err == gobreaker.ErrTooManyRequests || wait <= 0 {
			// half-open with its probes in flight: they answer soon
			wait = time.Second
		}
		return nil, wait, false
	}
	return func(failure, excluded bool) {
		switch {
		case excluded:
			done(errExcluded)
		case failure:
			done(errFailure)
		default:
			done(nil)
		}
	}, 0, true
}

func noTicket(bool, bool) {}

// isFailure says how an attempt's result counts for the breaker.
func (b *Breaker) isFailure(o Outcome, status int, took time.Duration) (failure, excluded bool) {
	switch o {
	case OutcomeCanceled, OutcomeBreakerOpen, OutcomePoolTimeout:
		return false, true
	case OutcomeOK, OutcomeUpstreamStatus:
		if b.isFailureStatus(status) {
			return true, false
		}
		return b.SlowCall > 0 && took > time.Duration(b.SlowCall), false
	}
	return true, false
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return strconv.FormatInt(s, 10)
}
