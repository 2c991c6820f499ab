package resilient

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Deadline takes the caller's deadline into account: a caller that says
// how long it will wait caps timeouts.total for its request (never
// raises it), so that no attempt and no retry wait goes on after it gave
// up; and each attempt can tell the upstream what is left. The caller's
// time counts from when the request first came through the transport,
// across Caddy's lb_retries, and its own slow upload counts against it
// (total does not count the time its body is waited for). Off unless
// configured.
type Deadline struct {
	// The request header carrying the caller's time left: a decimal
	// number of seconds (`1.5`, `1e3`) or a Go duration (`1500ms`), with
	// no sign. Anything else is ignored (the log entry says
	// `deadline_invalid`); `off`: none. Default: `X-Request-Timeout`.
	Header string `json:"header,omitempty"`

	// The header each attempt carries with what is left of the (capped)
	// total, with or without Header; `off`: none. Default: none.
	Send string `json:"send,omitempty"`

	// The unit Send writes in: `s`, seconds with three decimals
	// (`2.499`), the unit Header reads, so that a second gateway reading
	// the same header caps at the same instant; or `ms`, whole
	// milliseconds (`2499`), for upstreams that expect them. Default: `s`.
	SendUnit string `json:"send_unit,omitempty"`

	// For gRPC requests (Content-Type application/grpc…), grpc-timeout
	// caps total too, and is rewritten on each attempt to what is left.
	// Default: `true`.
	GRPC *bool `json:"grpc,omitempty"`

	header, send string // canonical; "": none
	sendMillis   bool
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
	if dl.Send != "" && dl.Send != "off" {
		dl.send = http.CanonicalHeaderKey(dl.Send)
	}
	switch dl.SendUnit {
	case "", "s":
	case "ms":
		dl.sendMillis = true
	default:
		return fmt.Errorf("send_unit must be s or ms, got %q", dl.SendUnit)
	}
	dl.grpc = dl.GRPC == nil || *dl.GRPC
	for _, h := range []string{dl.header, dl.send} {
		if h != "" && !isToken(h) {
			return fmt.Errorf("%q is not a header name", h)
		}
	}
	return nil
}

// noCap is where a caller's time left stops capping anything: a longer
// one, up to what no duration holds, means no cap.
const noCap = maxDuration

// parseTimeLeft reads a caller's time left: a decimal number of
// seconds, or a Go duration, with no sign; surrounding blanks are
// allowed. ok is false for anything else, a number past float64's range
// included: that is junk, not a number. A value of noCap or more reads
// as noCap, a Go duration too large for time.Duration too: it is
// written right, and asks for more time than any cap.
func parseTimeLeft(v string) (time.Duration, bool) {
	v = strings.Trim(v, " \t")
	if isDecimal(v) {
		f, err := strconv.ParseFloat(v, 64)
		switch {
		case err != nil:
			return 0, false // 1e309: an overflow, not a duration
		case f >= noCap.Seconds():
			return noCap, true
		}
		return time.Duration(f * float64(time.Second)), true
	}
	if v == "" || (v[0] != '.' && (v[0] < '0' || v[0] > '9')) {
		return 0, false // a sign, or no number
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if isDuration(v) {
			return noCap, true // only too large for time.Duration
		}
		return 0, false
	}
	return min(d, noCap), true
}

// isDuration reports whether s is written as an unsigned Go duration:
// numbers (digits with an optional fraction), each with a unit, as
// time.ParseDuration reads them but with no bound on their size.
func isDuration(s string) bool {
	if s == "" {
		return false
	}
	for s != "" {
		i := unsignedNumber(s)
		if i == 0 {
			return false
		}
		s = s[i:]
		j := 0
		for j < len(s) && s[j] != '.' && (s[j] < '0' || s[j] > '9') {
			j++
		}
		switch s[:j] {
		case "ns", "us", "\u00b5s", "\u03bcs", "ms", "s", "m", "h":
		default:
			return false
		}
		s = s[j:]
	}
	return true
}

// unsignedNumber returns the length of the number s begins with: digits
// with an optional fraction (`1.5`, `.5`, `5.`); 0 when it begins with
// none (`.` alone is none).
func unsignedNumber(s string) int {
	i, digits := 0, 0
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		digits++
	}
	if i < len(s) && s[i] == '.' {
		for i++; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			digits++
		}
	}
	if digits == 0 {
		return 0
	}
	return i
}

// isDecimal reports whether s is an unsigned decimal number: digits
// with an optional fraction (`1.5`, `.5`, `5.`), then an optional
// exponent (`1e3`, `25E-1`). strconv.ParseFloat alone would take hex
// (`0x1p3`), underscores (`1_0`), signs, `Inf` and `NaN` too.
func isDecimal(s string) bool {
	i := unsignedNumber(s)
	if i == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		return isDigits(s[i:])
	}
	return i == len(s)
}

// grpcUnits are the units of grpc-timeout.
var grpcUnits = map[byte]time.Duration{
	'H': time.Hour, 'M': time.Minute, 'S': time.Second,
	'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond,
}

// parseGRPCTimeout reads a grpc-timeout value: 1 to 8 digits and a unit.
// Hours run past what a duration holds (from 2562048H); anything of
// noCap or more reads as noCap.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 || !isDigits(v[:len(v)-1]) {
		return 0, false
	}
	unit, ok := grpcUnits[v[len(v)-1]]
	if !ok {
		return 0, false
	}
	n, _ := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if n >= int64(noCap/unit) {
		return noCap, true
	}
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

// formatSeconds writes d as seconds with three decimals, the
// milliseconds cut, not rounded: never more than is left.
func formatSeconds(d time.Duration) string {
	ms := max(d.Milliseconds(), 0)
	frac := strconv.FormatInt(1000+ms%1000, 10) // 1000 to 1999: three digits after the 1
	return strconv.FormatInt(ms/1000, 10) + "." + frac[1:]
}

// isGRPC reports whether req is a gRPC call.
func isGRPC(req *http.Request) bool {
	return strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")
}

// callerDeadline is the deadline step: the caller's time left caps the
// total bound of this request. It counts from when the request first
// came through the transport: a pass of Caddy's lb_retries goes on with
// what the earlier ones left. With less than a millisecond left the
// request ends total_timeout at once, nothing sent (done).
func (ex *exchange) callerDeadline(dl *Deadline) (res *http.Response, err error, done bool) {
	req := ex.req
	capAt := func(d time.Duration) {
		if d < noCap {
			ex.callerAt = earlier(ex.callerAt, ex.reqStart.Add(d))
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
	if timeUp(ex.totalDeadline(), time.Now()) {
		at := &ex.first.res
		*at = attemptResult{outcome: OutcomeTotalTimeout, neverSent: true}
		ex.tries = append(ex.tries, try{outcome: at.outcome})
		res, err := ex.finish(nil, at)
		return res, err, true
	}
	return nil, nil, false
}

// deadlineHeader returns the header an attempt sends, with what is left
// of the request's time, left (bounded: false when there is no bound),
// in the deadline headers; the request's own when there is nothing to
// write. Each attempt gets a copy of its own, as hedged attempts are in
// flight at once.
func (ex *exchange) deadlineHeader(left time.Duration, bounded bool) http.Header {
	dl := ex.t.Deadline
	if dl == nil || !bounded || (dl.send == "" && !ex.grpcTimeout) {
		return ex.header
	}
	left = max(left, 0)
	h := ex.header.Clone()
	switch {
	case dl.send == "":
	case dl.sendMillis:
		h.Set(dl.send, strconv.FormatInt(left.Milliseconds(), 10))
	default:
		h.Set(dl.send, formatSeconds(left))
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
		case "header":
			v, err := oneArg(d, "deadline", opt)
			if err != nil {
				return err
			}
			if v != "off" && !isToken(v) {
				return d.Errf("deadline: header: %q is not a header name", v)
			}
			dl.Header = v
		case "send":
			// send <name|off> [s|ms]
			if !d.NextArg() {
				return d.Errf("deadline: send needs a header name, or off")
			}
			v := d.Val()
			if v != "off" && !isToken(v) {
				return d.Errf("deadline: send: %q is not a header name", v)
			}
			dl.Send = v
			if d.NextArg() {
				unit := d.Val()
				switch {
				case v == "off":
					return d.Errf("deadline: send off takes no unit, got %q", unit)
				case unit != "s" && unit != "ms":
					return d.Errf("deadline: send: the unit must be s or ms, got %q", unit)
				}
				dl.SendUnit = unit
			}
			if d.NextArg() {
				return d.Errf("deadline: send takes a header name and a unit, got another: %q", d.Val())
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
