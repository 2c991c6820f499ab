package resilient

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Deadline takes the caller's deadline into account: a caller that says
// how long it will wait caps timeouts.total for its request (never
// raises it), so that no attempt and no retry wait goes on after it gave
// up; and each attempt can tell the upstream what is left. Off unless
// configured.
type Deadline struct {
	// The request header carrying the caller's time left: seconds
	// (`1.5`, `1e3`) or a Go duration (`1500ms`). Anything else is
	// ignored (the log entry says `deadline_invalid`); `off`: none.
	// Default: `X-Request-Timeout`.
	Header string `json:"header,omitempty"`

	// The header each attempt carries with what is left of the (capped)
	// total, in whole milliseconds. Default: none.
	Send string `json:"send,omitempty"`

	// For gRPC requests (Content-Type application/grpc…), grpc-timeout
	// caps total too, and is rewritten on each attempt to what is left.
	// Default: `true`.
	GRPC *bool `json:"grpc,omitempty"`

	header, send string // canonical; "": none
	grpc         bool
}

func (dl *Deadline) provision() error {
	switch dl.Header {
	case "":
		dl.header = "X-Request-Timeout"
	case "off":
		dl.header = ""
	default:
		dl.header = http.CanonicalHeaderKey(dl.Header)
	}
	if dl.Send != "" {
		dl.send = http.CanonicalHeaderKey(dl.Send)
	}
	dl.grpc = dl.GRPC == nil || *dl.GRPC
	for _, h := range []string{dl.header, dl.send} {
		if h != "" && !isToken(h) {
			return fmt.Errorf("%q is not a header name", h)
		}
	}
	return nil
}

// maxCallerSeconds bounds a caller's value: past it a number of seconds
// does not fit a duration, and caps nothing anyway.
const maxCallerSeconds = float64(math.MaxInt64 / int64(time.Second))

// parseTimeLeft reads a caller's time left: a non-negative decimal
// number of seconds, or a Go duration. ok is false for anything else.
func parseTimeLeft(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		switch {
		case math.IsNaN(f) || math.IsInf(f, 0) || f < 0:
			return 0, false
		case f >= maxCallerSeconds:
			return maxDuration, true
		}
		return time.Duration(f * float64(time.Second)), true
	} else if ne, isNum := err.(*strconv.NumError); isNum && ne.Err == strconv.ErrRange {
		return 0, false // 1e309: an overflow, not a duration
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, false
	}
	return d, true
}

// grpcUnits are the units of grpc-timeout.
var grpcUnits = map[byte]time.Duration{
	'H': time.Hour, 'M': time.Minute, 'S': time.Second,
	'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond,
}

// parseGRPCTimeout reads a grpc-timeout value: 1 to 8 digits and a unit.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 || !isDigits(v[:len(v)-1]) {
		return 0, false
	}
	unit, ok := grpcUnits[v[len(v)-1]]
	if !ok {
		return 0, false
	}
	n, _ := strconv.ParseInt(v[:len(v)-1], 10, 64)
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as grpc-timeout: milliseconds while they fit
// in 8 digits, else seconds, else hours.
func formatGRPCTimeout(d time.Duration) string {
	switch ms := d.Milliseconds(); {
	case ms < 1e8:
		return strconv.FormatInt(max(ms, 0), 10) + "m"
	case d/time.Second < 1e8:
		return strconv.FormatInt(int64(d/time.Second), 10) + "S"
	default:
		return strconv.FormatInt(min(int64(d/time.Hour), 99999999), 10) + "H"
	}
}

// isGRPC reports whether req is a gRPC call.
func isGRPC(req *http.Request) bool {
	return strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")
}

// callerDeadline is the deadline step: the caller's time left caps the
// total bound of this request. With less than a millisecond left the
// request ends total_timeout at once, nothing sent (done).
func (ex *exchange) callerDeadline(dl *Deadline) (res *http.Response, err error, done bool) {
	req := ex.req
	capAt := func(d time.Duration) {
		at := ex.start.Add(min(d, maxDuration))
		if ex.totalAt.IsZero() || at.Before(ex.totalAt) {
			ex.totalAt = at
		}
	}
	if dl.header != "" {
		if vs := req.Header.Values(dl.header); len(vs) > 0 {
			if d, ok := parseTimeLeft(vs[0]); ok && len(vs) == 1 {
				capAt(d)
			} else {
				ex.deadlineInvalid = true
			}
		}
	}
	if dl.grpc && isGRPC(req) {
		if v := req.Header.Get("Grpc-Timeout"); v != "" {
			if d, ok := parseGRPCTimeout(v); ok {
				capAt(d)
				ex.grpcTimeout = true
			} else {
				ex.deadlineInvalid = true
			}
		}
	}
	if !ex.totalAt.IsZero() && time.Until(ex.totalAt) < time.Millisecond {
		at := &ex.first.res
		*at = attemptResult{outcome: OutcomeTotalTimeout, neverSent: true}
		ex.tries = append(ex.tries, try{outcome: at.outcome})
		res, err := ex.finish(nil, at)
		return res, err, true
	}
	return nil, nil, false
}

// deadlineHeader returns the header an attempt sends, with what is left
// of the total bound in the deadline headers; the request's own when
// there is nothing to write. Each attempt gets a copy of its own, as
// hedged attempts are in flight at once.
func (ex *exchange) deadlineHeader(totalAt time.Time) http.Header {
	dl := ex.t.Deadline
	if dl == nil || totalAt.IsZero() || (dl.send == "" && !ex.grpcTimeout) {
		return ex.header
	}
	left := max(time.Until(totalAt), 0)
	h := ex.header.Clone()
	if dl.send != "" {
		h.Set(dl.send, strconv.FormatInt(left.Milliseconds(), 10))
	}
	if ex.grpcTimeout {
		h.Set("Grpc-Timeout", formatGRPCTimeout(left))
	}
	return h
}

// deadlineOptions are the options of the deadline block.
var deadlineOptions = []string{"header", "send", "grpc"}

func parseDeadline(d *caddyfile.Dispenser) (*Deadline, error) {
	dl := new(Deadline)
	err := block(d, func(opt string) error {
		switch opt {
		case "header", "send":
			v, err := oneArg(d, "deadline", opt)
			if err != nil {
				return err
			}
			if !(opt == "header" && v == "off") && !isToken(v) {
				return d.Errf("deadline: %s: %q is not a header name", opt, v)
			}
			if opt == "header" {
				dl.Header = v
			} else {
				dl.Send = v
			}
		case "grpc":
			v, err := oneArg(d, "deadline", opt)
			if err != nil {
				return err
			}
			if v != "on" && v != "off" {
				return d.Errf("deadline: grpc must be on or off, got %q", v)
			}
			on := v == "on"
			dl.GRPC = &on
		default:
			return unknownOption(d, "deadline", opt, deadlineOptions)
		}
		return nil
	})
	return dl, err
}
