// Package chaos provides the http.handlers.chaos middleware, which injects
// faults into HTTP responses: an error status, a delay, a rate limit, a hang,
// a reset connection or a truncated body. It stands in for a misbehaving
// upstream in tests, demos and benchmarks, so they need no network and no
// other program.
package chaos

import (
	"fmt"
	"hash/maphash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// The actions a fault can take.
const (
	actionStatus   = "status"
	actionDelay    = "delay"
	actionQuota    = "quota"
	actionHang     = "hang"
	actionReset    = "reset"
	actionTruncate = "truncate"
)

// faultHeader tells a demo user which fault wrote the response.
const faultHeader = "Chaos-Fault"

// Limits that keep a fault from holding resources forever. They are
// variables so that tests can shrink them.
var (
	// hangCap bounds a hang whose client never goes away.
	hangCap = 10 * time.Minute
	// maxKeys bounds the per-key request counters and quotas; past it they
	// start over.
	maxKeys = 100_000
)

const (
	// maxDrain is how much of a request body reset and truncate read first,
	// so that the upstream has provably received the request.
	maxDrain = 10 << 20
	// truncateLength is the Content-Length a truncated response announces;
	// only half of it is sent.
	truncateLength = 1024
)

// Handler injects faults. The faults are checked in order and the first one
// that triggers for a request acts; when none triggers, the request goes on
// to the next handler untouched.
//
// A GET request with the header `X-Chaos-Stats: 1` is not one to misbehave
// on: the handler answers it itself, with the quota counts since its start
// as JSON, {"quota_passed":n,"quota_refused":m}, and counts it nowhere. That
// lets a benchmark in another process read them over HTTP. A request counts
// as passed when every quota it reached let it through, and as refused when
// one answered it 429; requests that reached no quota are not counted.
type Handler struct {
	// KeyHeader names the request header whose value groups requests for the
	// faults that use `first` and for `per_key` quotas: each distinct value has
	// its own request count, and requests without the header share one.
	// Default: `X-Chaos-Key`.
	KeyHeader string `json:"key_header,omitempty"`

	// Faults are checked in order for every request; the first that triggers
	// acts. With no faults every request passes through. Default: none.
	Faults []Fault `json:"faults,omitempty"`

	counts    *keyCounter
	usesFirst bool
	stats     *quotaStats
	logger    *zap.Logger
}

// Fault is one way to misbehave, and when to do it. A quota triggers for the
// requests over its limit; any other fault with neither Probability nor First
// triggers on every request.
type Fault struct {
	// Action is what the fault does: `status` answers with Status, `delay`
	// waits for Delay then passes the request on, `quota` answers 429 Too
	// Many Requests to the requests over Limit per Window and passes the
	// others on, `hang` never answers, `reset` reads the request body then
	// resets the connection (TCP RST), and `truncate` announces a 1024-byte
	// body, sends 512 bytes and aborts the connection. Required; there is no
	// default.
	Action string `json:"action"`

	// Status is the response status of a `status` fault, 200 to 599.
	// Required for `status`; there is no default.
	Status int `json:"status,omitempty"`

	// RetryAfter, for a `status` or `quota` fault, is sent in a Retry-After
	// header as whole seconds, rounded up. Default: `0`, which means no header
	// for `status` and, for `quota`, the time until the current window ends,
	// rounded up, and at least 1.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// Body, for a `status` or `quota` fault, is sent as a text/plain response
	// body. Default: empty.
	Body string `json:"body,omitempty"`

	// Delay is how long a `delay` fault waits before passing the request on;
	// it stops waiting, and answers nothing, if the client goes away.
	// Required for `delay`; there is no default.
	Delay caddy.Duration `json:"delay,omitempty"`

	// Limit is how many requests a `quota` fault lets through in each
	// window. Required for `quota`; there is no default.
	Limit int `json:"limit,omitempty"`

	// Window is the length of a `quota` fault's windows: `1s`, `1m` or `1h`.
	// It is a fixed window: time is cut into windows of this length, back to
	// back from the handler's start, and only the requests let through count
	// against one. So at most Limit pass in any one window, though up to
	// twice that can pass in a span of Window that straddles two, as with
	// many real APIs. Required for `quota`; there is no default.
	Window caddy.Duration `json:"window,omitempty"`

	// PerKey gives a `quota` fault a count for each key (see key_header)
	// instead of one for the whole handler. Past 100000 keys in one window
	// the counts start over. Default: `false`.
	PerKey bool `json:"per_key,omitempty"`

	// Probability, from 0 to 1, is the chance that the fault triggers for a
	// request. It cannot be combined with First, nor used by a `quota`
	// fault. Default: unset (always).
	Probability *float64 `json:"probability,omitempty"`

	// First makes the fault trigger on the first N requests that share a key
	// (see key_header), counted from the handler's start, and on none after.
	// The count is per key, not per fault, so `status 503 first 2` followed
	// by `delay 1s first 3` fails requests 1 and 2 and delays request 3.
	// It cannot be combined with Probability, nor used by a `quota` fault.
	// Default: `0` (unset).
	First int `json:"first,omitempty"`

	quota *quota
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.chaos",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision applies the defaults and sets up the request counters and
// quotas.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.KeyHeader == "" {
		h.KeyHeader = "X-Chaos-Key"
	}
	for i := range h.Faults {
		f := &h.Faults[i]
		if f.First > 0 {
			h.usesFirst = true
		}
		if f.Action == actionQuota {
			f.quota = newQuota(f)
		}
	}
	h.counts = &keyCounter{seed: maphash.MakeSeed()}
	h.stats = new(quotaStats)
	return nil
}

// Validate checks every fault.
func (h *Handler) Validate() error {
	for i, f := range h.Faults {
		if err := f.validate(); err != nil {
			return fmt.Errorf("chaos: faults[%d] (%s): %w", i, f.Action, err)
		}
	}
	return nil
}

// validate checks one fault; the parser reuses it so that the Caddyfile and
// JSON reject the same things.
func (f Fault) validate() error {
	switch f.Action {
	case actionStatus:
		if f.Status < 200 || f.Status > 599 {
			return fmt.Errorf("status code must be between 200 and 599, got %d", f.Status)
		}
	case actionDelay:
		if f.Delay <= 0 {
			return fmt.Errorf("delay must be > 0, got %s", time.Duration(f.Delay))
		}
	case actionQuota:
		if f.Limit < 1 {
			return fmt.Errorf("limit must be >= 1, got %d", f.Limit)
		}
		switch time.Duration(f.Window) {
		case time.Second, time.Minute, time.Hour:
		default:
			return fmt.Errorf("window must be 1s, 1m or 1h, got %s", time.Duration(f.Window))
		}
		// A quota already decides which requests it refuses.
		switch {
		case f.Probability != nil:
			return fmt.Errorf("probability cannot be used with the quota action, got %v", *f.Probability)
		case f.First != 0:
			return fmt.Errorf("first cannot be used with the quota action, got %d", f.First)
		}
	case actionHang, actionReset, actionTruncate:
	default:
		return fmt.Errorf("action must be one of status, delay, quota, hang, reset, truncate, got %q", f.Action)
	}
	if f.Action != actionStatus && f.Status != 0 {
		return fmt.Errorf("status only applies to the status action, got %d", f.Status)
	}
	if f.Action != actionStatus && f.Action != actionQuota {
		switch {
		case f.RetryAfter != 0:
			return fmt.Errorf("retry_after only applies to the status and quota actions, got %s", time.Duration(f.RetryAfter))
		case f.Body != "":
			return fmt.Errorf("body only applies to the status and quota actions, got %q", f.Body)
		}
	}
	if f.Action != actionQuota {
		switch {
		case f.Limit != 0:
			return fmt.Errorf("limit only applies to the quota action, got %d", f.Limit)
		case f.Window != 0:
			return fmt.Errorf("window only applies to the quota action, got %s", time.Duration(f.Window))
		case f.PerKey:
			return fmt.Errorf("per_key only applies to the quota action")
		}
	}
	if f.Action != actionDelay && f.Delay != 0 {
		return fmt.Errorf("delay only applies to the delay action, got %s", time.Duration(f.Delay))
	}
	if f.RetryAfter < 0 {
		return fmt.Errorf("retry_after must be > 0, got %s", time.Duration(f.RetryAfter))
	}
	if f.Probability != nil {
		// Written so that NaN fails too.
		if p := *f.Probability; !(p >= 0 && p <= 1) {
			return fmt.Errorf("probability must be between 0 and 1, got %v", p)
		}
		if f.First != 0 {
			return fmt.Errorf("probability and first cannot be used together")
		}
	}
	if f.First < 0 {
		return fmt.Errorf("first must be >= 1, got %d", f.First)
	}
	return nil
}

// ServeHTTP lets the first fault that triggers act on the request, or passes
// the request on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method == http.MethodGet && r.Header.Get(statsHeader) == "1" {
		return h.stats.serve(w)
	}
	key := r.Header.Get(h.KeyHeader)
	var seq uint64
	if h.usesFirst {
		seq = h.counts.next(key)
	}
	admitted := false // by a quota, and refused by none so far
	for i := range h.Faults {
		f := &h.Faults[i]
		if f.Action == actionQuota {
			untilNext, ok := f.quota.admit(key)
			if ok {
				admitted = true
				continue
			}
			h.stats.refused.Add(1)
			h.logFault(i, f)
			return f.refuse(w, untilNext)
		}
		if !f.triggers(seq) {
			continue
		}
		if admitted {
			h.stats.passed.Add(1)
		}
		h.logFault(i, f)
		return f.act(w, r, next)
	}
	if admitted {
		h.stats.passed.Add(1)
	}
	return next.ServeHTTP(w, r)
}

func (h *Handler) logFault(i int, f *Fault) {
	if c := h.logger.Check(zapcore.DebugLevel, "injecting fault"); c != nil {
		c.Write(zap.Int("fault", i), zap.String("action", f.Action))
	}
}

// triggers reports whether the fault acts on the request that is the seq-th
// of its key.
func (f *Fault) triggers(seq uint64) bool {
	switch {
	case f.First > 0:
		return seq <= uint64(f.First)
	case f.Probability != nil:
		// Float64 is in [0,1), so 0 never triggers and 1 always does.
		return rand.Float64() < *f.Probability
	default:
		return true
	}
}

func (f *Fault) act(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	switch f.Action {
	case actionStatus:
		respond(w, actionStatus, f.Status, time.Duration(f.RetryAfter), f.Body)
		return nil

	case actionDelay:
		if !wait(r, time.Duration(f.Delay)) {
			return nil
		}
		w.Header().Set(faultHeader, actionDelay)
		return next.ServeHTTP(w, r)

	case actionHang:
		if !wait(r, hangCap) {
			return nil
		}
		// Still never answer, but let go of the connection.
		panic(http.ErrAbortHandler)

	case actionReset:
		drain(r)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			// HTTP/2 and HTTP/3 cannot hand over the connection; aborting
			// the handler resets the stream instead.
			panic(http.ErrAbortHandler)
		}
		setNoLinger(conn)
		return conn.Close()

	case actionTruncate:
		drain(r)
		hdr := w.Header()
		hdr.Set(faultHeader, actionTruncate)
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		hdr.Set("Content-Length", strconv.Itoa(truncateLength))
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, strings.Repeat("x", truncateLength/2))
		// Flush so the partial body is on the wire before the abort closes
		// the connection (or resets the HTTP/2 stream).
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}
	// Validate rules this out.
	return fmt.Errorf("chaos: unknown action %q", f.Action)
}

// respond answers with code and body, and with a Retry-After header of
// retryAfter in whole seconds, rounded up, when it is > 0.
func respond(w http.ResponseWriter, action string, code int, retryAfter time.Duration, body string) {
	hdr := w.Header()
	hdr.Set(faultHeader, action)
	if retryAfter > 0 {
		secs := (retryAfter + time.Second - 1) / time.Second
		hdr.Set("Retry-After", strconv.FormatInt(int64(secs), 10))
	}
	if body != "" {
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.WriteHeader(code)
	// A client that went away cannot be told anything more.
	_, _ = io.WriteString(w, body)
}

// wait sleeps for d and reports whether it did; it returns false early when
// the client goes away.
func wait(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.Context().Done():
		return false
	case <-t.C:
		return true
	}
}

// drain reads and discards up to maxDrain bytes of the request body.
func drain(r *http.Request) {
	if r.Body != nil {
		_, _ = io.CopyN(io.Discard, r.Body, maxDrain)
	}
}

// setNoLinger makes closing conn send a TCP RST instead of a FIN, looking
// through wrappers such as TLS for the TCP connection.
func setNoLinger(conn net.Conn) {
	for {
		switch c := conn.(type) {
		case interface{ SetLinger(int) error }:
			_ = c.SetLinger(0)
			return
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return
		}
	}
}

// keyCounter counts requests per key, safe for concurrent use. Keys are
// hashed so that memory stays bounded whatever the header values are.
type keyCounter struct {
	seed maphash.Seed
	mu   sync.Mutex
	seen map[uint64]uint64
}

// next counts one more request for key and returns its number, from 1.
func (c *keyCounter) next(key string) uint64 {
	k := maphash.String(c.seed, key)
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.seen[k]
	if !ok && len(c.seen) >= maxKeys {
		// Too many keys: start over rather than grow without bound.
		c.seen = nil
	}
	if c.seen == nil {
		c.seen = make(map[uint64]uint64)
	}
	n++
	c.seen[k] = n
	return n
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
