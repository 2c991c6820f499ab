package resilient

import (
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile sets up the transport from Caddyfile tokens. Syntax:
//
//	transport resilient {
//		# any `transport http` subdirective
//
//		timeouts {
//			connect <duration|off>
//			tls     <duration|off>
//			write   <duration|off>
//			read    <duration|off>
//			pool    <duration|off>
//			attempt <duration|off>
//			total   <duration|off>
//		}
//		pool {
//			max_conns    <n>
//			max_idle     <n>
//			idle_timeout <duration>
//		}
//		retry off
//		retry {
//			attempts <n>
//			backoff  <first> <longest>
//			on       <connect_error|tls_error|reset|timeout|status|class>...
//			methods  <method>...
//			idempotency_header <name|off>
//			generate_idempotency_key
//			retry_after <duration|off>
//			budget   <ratio> <min_per_second> | off
//			max_body <size>
//		}
//		idempotency {
//			header       <name>
//			methods      <method>...
//			scope        <placeholder>...
//			ttl          <duration>
//			max_response <size>
//			max_memory   <size>
//			wait         auto|<duration>
//			complete_within <duration>
//			require
//		}
//		hedge {
//			after <pNN|duration>
//			min   <duration>
//			max   <1-3>
//		}
//		deadline {
//			header <name|off>
//			send   <name|off> [s|ms]
//			grpc   on|off
//		}
//		fallback {
//			stale        <duration>
//			on           <outcome|status>...
//			methods      <method>...
//			scope        <placeholder>...
//			max_response <size>
//			max_memory   <size>
//		}
//		breaker off
//		rate_limit {
//			rate             <n>/s|<n>/m|<n>/h
//			burst            <n>
//			max_wait         <duration>
//			key              <placeholder>
//			obey_retry_after on|off
//		}
//		breaker {
//			failure_ratio        <0..1>
//			min_requests         <n>
//			consecutive_failures <n>
//			window               <duration>
//			open_for             <first> [<longest>]
//			half_open_requests   <n>
//			failure_status       <status|class>...
//			slow_call            <duration>
//		}
//	}
//
// Defaults are applied at provision time, so an empty block adapts to
// just the protocol name.
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the transport name
	name := d.Token()
	if d.NextArg() {
		return d.Errf("transport %s takes no arguments, got %q; its options go in a block", name.Text, d.Val())
	}
	var http []caddyfile.Token // `transport http` subdirectives, handed over as is
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "timeouts", "pool", "retry", "breaker", "rate_limit", "fleet", "idempotency", "hedge", "deadline", "fallback":
			if seen[opt] {
				return d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		var err error
		switch opt {
		case "timeouts":
			t.Timeouts, err = parseTimeouts(d)
		case "pool":
			t.Pool, err = parsePool(d)
		case "retry":
			t.Retry, err = parseRetry(d)
		case "breaker":
			t.Breaker, err = parseBreaker(d)
		case "rate_limit":
			t.RateLimit, err = parseRateLimit(d)
		case "fleet":
			t.Fleet, err = parseFleet(d)
		case "idempotency":
			t.Idempotency, err = parseIdempotency(d)
		case "hedge":
			t.Hedge, err = parseHedge(d)
		case "deadline":
			t.Deadline, err = parseDeadline(d)
		case "fallback":
			t.Fallback, err = parseFallback(d)
		default:
			if hint := blockHint(opt); hint != "" {
				return d.Errf("unrecognized subdirective %s; did you mean `%s`?", opt, hint)
			}
			http = append(http, d.NextSegment()...)
		}
		if err != nil {
			return err
		}
	}
	if len(http) == 0 {
		return nil
	}
	open, closing := name, http[len(http)-1]
	open.Text = "{"
	closing.Text, closing.Line = "}", closing.Line+1
	toks := append([]caddyfile.Token{name, open}, http...)
	toks = append(toks, closing)
	return t.HTTPTransport.UnmarshalCaddyfile(caddyfile.NewDispenser(toks))
}

// block walks the options of a sub-block such as `timeouts { … }`,
// refusing arguments on its opening line and repeated options.
func block(d *caddyfile.Dispenser, each func(opt string) error) error {
	parent := d.Val()
	if d.NextArg() {
		return d.Errf("%s: unexpected argument %q; options go in a block", parent, d.Val())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s: %s already specified", parent, opt)
		}
		seen[opt] = true
		if err := each(opt); err != nil {
			return err
		}
	}
	return nil
}

// offSwitch reads the `off` of `retry off` or `breaker off`; it reports
// false when a block follows instead.
func offSwitch(d *caddyfile.Dispenser, name string) (bool, error) {
	if !d.NextArg() {
		return false, nil
	}
	if d.Val() != "off" {
		return false, d.Errf("%s: expected `off` or a block, got %q", name, d.Val())
	}
	return true, noArgs(d, name, "off")
}

// oneArg returns the single argument of option opt of block parent.
func oneArg(d *caddyfile.Dispenser, parent, opt string) (string, error) {
	if !d.NextArg() {
		return "", d.Errf("%s: %s needs a value", parent, opt)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: %s takes one value, got another: %q", parent, opt, d.Val())
	}
	return v, nil
}

// noArgs refuses arguments after option opt of block parent.
func noArgs(d *caddyfile.Dispenser, parent, opt string) error {
	if d.NextArg() {
		return d.Errf("%s: %s takes no value, got %q", parent, opt, d.Val())
	}
	return nil
}

// duration parses a positive duration; with allowOff, `off` gives -1.
func duration(d *caddyfile.Dispenser, parent, opt string, allowOff bool) (caddy.Duration, error) {
	v, err := oneArg(d, parent, opt)
	if err != nil {
		return 0, err
	}
	if allowOff && v == "off" {
		return -1, nil
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		want := "a positive duration"
		if allowOff {
			want += " or off"
		}
		return 0, d.Errf("%s: %s must be %s, got %q", parent, opt, want, v)
	}
	return caddy.Duration(dur), nil
}

// firstAndLongest parses the two durations of an option that takes a
// first and a longest (backoff's waits, open_for's periods): positive,
// the longest no shorter than the first. With optional, the longest may
// be left out, and is then 0. noun names one of them in the messages.
func firstAndLongest(d *caddyfile.Dispenser, parent, opt, noun string, optional bool) (first, longest time.Duration, err error) {
	args := d.RemainingArgs()
	switch {
	case optional && (len(args) == 0 || len(args) > 2):
		return 0, 0, d.Errf("%s: %s takes one or two durations, the first %s and the longest, got %d arguments", parent, opt, noun, len(args))
	case !optional && len(args) != 2:
		return 0, 0, d.Errf("%s: %s takes two durations, the first %s and the longest, got %d arguments", parent, opt, noun, len(args))
	}
	var ds [2]time.Duration
	for i, a := range args {
		v, perr := caddy.ParseDuration(a)
		if perr != nil || v <= 0 {
			return 0, 0, d.Errf("%s: %s %ss must be positive durations, got %q", parent, opt, noun, a)
		}
		ds[i] = v
	}
	if len(args) == 2 && ds[1] < ds[0] {
		return 0, 0, d.Errf("%s: %s longest %s %s is shorter than the first %s", parent, opt, noun, args[1], args[0])
	}
	return ds[0], ds[1], nil
}

// integer parses a whole number from lo to hi; the message gives the
// range, whatever is wrong with the value (a fraction, a word, a number
// out of range or too large to hold).
func integer(d *caddyfile.Dispenser, parent, opt string, lo, hi int) (int, error) {
	v, err := oneArg(d, parent, opt)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		return 0, d.Errf("%s: %s must be a whole number from %d to %d, got %s", parent, opt, lo, hi, v)
	case n < lo:
		return 0, d.Errf("%s: %s must be >= %d, got %s (a whole number from %d to %d)", parent, opt, lo, v, lo, hi)
	case n > hi:
		return 0, d.Errf("%s: %s must be <= %d, got %s (a whole number from %d to %d)", parent, opt, hi, v, lo, hi)
	}
	return n, nil
}

// manyArgs returns the arguments of option opt of block parent, at least
// one; what names them in the message when there are none.
func manyArgs(d *caddyfile.Dispenser, parent, opt, what string) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Errf("%s: %s needs at least one value: %s", parent, opt, what)
	}
	return args, nil
}

// unknownOption is the error for an option block parent does not have,
// with the one it most likely meant.
func unknownOption(d *caddyfile.Dispenser, parent, opt string, known []string) error {
	if hint := closest(opt, known); hint != "" {
		return d.Errf("%s: unrecognized subdirective %s; did you mean `%s`?", parent, opt, hint)
	}
	return d.Errf("%s: unrecognized subdirective %s; it takes %s", parent, opt, strings.Join(known, ", "))
}

// closest returns the name of known that name most likely misspells:
// within two edits, or one of them with a letter or a plural `s` more
// or less; "" when none is that close.
func closest(name string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		dist := editDistance(name, k)
		if strings.HasPrefix(k, name) || strings.HasPrefix(name, k) {
			dist = min(dist, 1)
		}
		if dist < bestDist {
			best, bestDist = k, dist
		}
	}
	return best
}

func parseTimeouts(d *caddyfile.Dispenser) (*Timeouts, error) {
	to := new(Timeouts)
	fields := map[string]*caddy.Duration{
		"connect": &to.Connect, "tls": &to.TLS, "write": &to.Write, "read": &to.Read,
		"pool": &to.Pool, "attempt": &to.Attempt, "total": &to.Total,
	}
	err := block(d, func(opt string) error {
		f, ok := fields[opt]
		if !ok {
			return unknownOption(d, "timeouts", opt, timeoutsOptions)
		}
		v, err := duration(d, "timeouts", opt, true)
		*f = v
		if err == nil && (opt == "attempt" || opt == "total") {
			if err := to.validate(); err != nil {
				return d.Errf("timeouts: %v", err)
			}
		}
		return err
	})
	return to, err
}

func parsePool(d *caddyfile.Dispenser) (*Pool, error) {
	p := new(Pool)
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "max_conns":
			p.MaxConns, err = integer(d, "pool", opt, 0, maxCount)
		case "max_idle":
			p.MaxIdle, err = integer(d, "pool", opt, 0, maxCount)
			if p.MaxIdle == 0 {
				p.MaxIdle = -1 // keep none
			}
		case "idle_timeout":
			p.IdleTimeout, err = duration(d, "pool", opt, false)
		default:
			return unknownOption(d, "pool", opt, poolOptions)
		}
		return err
	})
	return p, err
}

func parseRetry(d *caddyfile.Dispenser) (*Retry, error) {
	r := new(Retry)
	if off, err := offSwitch(d, "retry"); off || err != nil {
		r.Disabled = true
		return r, err
	}
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "attempts":
			r.Attempts, err = integer(d, "retry", opt, 1, maxAttempts)
		case "backoff":
			first, longest, err := firstAndLongest(d, "retry", opt, "wait", false)
			if err != nil {
				return err
			}
			r.Backoff = &Backoff{First: caddy.Duration(first), Max: caddy.Duration(longest)}
		case "on":
			args, err := manyArgs(d, "retry", opt, "connect_error, tls_error, reset, timeout, a status such as 503 or a class such as 5xx")
			if err != nil {
				return err
			}
			for _, a := range args {
				if _, ok := retryConditions[a]; ok {
					continue
				}
				if _, err := parseFailureMatch(a); err != nil {
					return d.Errf("retry: on: %v", err)
				}
			}
			r.On = args
		case "methods":
			args, err := manyArgs(d, "retry", opt, "HTTP methods such as GET PUT DELETE")
			if err != nil {
				return err
			}
			for i, m := range args {
				if !isToken(m) {
					return d.Errf("retry: methods: %q is not an HTTP method", m)
				}
				args[i] = strings.ToUpper(m)
			}
			r.Methods = args
		case "idempotency_header":
			v, err := oneArg(d, "retry", opt)
			if err != nil {
				return err
			}
			if v != "off" && !isToken(v) {
				return d.Errf("retry: idempotency_header: %q is not a header name", v)
			}
			r.IdempotencyHeader = v
		case "generate_idempotency_key":
			if err := noArgs(d, "retry", opt); err != nil {
				return err
			}
			r.GenerateIdempotencyKey = true
		case "retry_after":
			r.RetryAfter, err = duration(d, "retry", opt, true)
		case "budget":
			args := d.RemainingArgs()
			if len(args) == 1 && args[0] == "off" {
				r.Budget = &Budget{Disabled: true}
				return nil
			}
			if len(args) != 2 {
				return d.Errf("retry: budget takes a ratio and a minimum per second, or off; got %d arguments", len(args))
			}
			ratio, err1 := strconv.ParseFloat(args[0], 64)
			if err1 != nil || !validRatio(ratio) {
				return d.Errf("retry: budget ratio must be a number from 0 to 1000, got %q", args[0])
			}
			floor, err2 := strconv.Atoi(args[1])
			if err2 != nil || floor < 0 || floor > maxMinPerSecond {
				return d.Errf("retry: budget min_per_second must be an integer from 0 to %d, got %q", maxMinPerSecond, args[1])
			}
			r.Budget = &Budget{Ratio: &ratio, MinPerSecond: &floor}
		case "max_body":
			v, err := oneArg(d, "retry", opt)
			if err != nil {
				return err
			}
			size, perr := humanize.ParseBytes(v)
			if perr != nil || size == 0 || size > 1<<40 {
				return d.Errf("retry: max_body must be a positive size such as 1MiB, got %q", v)
			}
			r.MaxBody = int64(size)
		default:
			return unknownOption(d, "retry", opt, retryOptions)
		}
		return err
	})
	return r, err
}

func parseBreaker(d *caddyfile.Dispenser) (*Breaker, error) {
	b := new(Breaker)
	if off, err := offSwitch(d, "breaker"); off || err != nil {
		b.Disabled = true
		return b, err
	}
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "failure_ratio":
			v, err := oneArg(d, "breaker", opt)
			if err != nil {
				return err
			}
			f, perr := strconv.ParseFloat(v, 64)
			if perr != nil || !(f > 0 && f <= 1) { // NaN fails too
				return d.Errf("breaker: failure_ratio must be > 0 and <= 1, got %q", v)
			}
			b.FailureRatio = f
		case "min_requests":
			b.MinRequests, err = integer(d, "breaker", opt, 1, maxCount)
		case "consecutive_failures":
			var n int
			n, err = integer(d, "breaker", opt, 0, maxCount)
			b.ConsecutiveFailures = &n
		case "window":
			b.Window, err = duration(d, "breaker", opt, false)
		case "open_for":
			// one value: a fixed period (open_for_max defaults to it)
			first, longest, err := firstAndLongest(d, "breaker", opt, "period", true)
			b.OpenFor, b.OpenForMax = caddy.Duration(first), caddy.Duration(longest)
			return err
		case "half_open_requests":
			b.HalfOpenRequests, err = integer(d, "breaker", opt, 1, maxHalfOpen)
		case "failure_status":
			args, err := manyArgs(d, "breaker", opt, "statuses such as 503 or classes such as 5xx")
			if err != nil {
				return err
			}
			for _, a := range args {
				if _, err := parseFailureMatch(a); err != nil {
					return d.Errf("breaker: failure_status: %v", err)
				}
			}
			b.FailureStatus = args
		case "slow_call":
			v, err := oneArg(d, "breaker", opt)
			if err != nil {
				return err
			}
			dur, perr := caddy.ParseDuration(v)
			if perr != nil || dur < 0 {
				return d.Errf("breaker: slow_call must be a duration >= 0, got %q", v)
			}
			b.SlowCall = caddy.Duration(dur)
		case "open_for_max":
			// the JSON field's name; the Caddyfile has it as open_for's second value
			return d.Errf("breaker: unrecognized subdirective open_for_max; the longest open period is open_for's second value, e.g. `open_for 1s 30s`")
		default:
			return unknownOption(d, "breaker", opt, breakerOptions)
		}
		return err
	})
	return b, err
}

// The options of each block, in the order the docs give them.
var (
	timeoutsOptions  = []string{"connect", "tls", "write", "read", "pool", "attempt", "total"}
	poolOptions      = []string{"max_conns", "max_idle", "idle_timeout"}
	retryOptions     = []string{"attempts", "backoff", "on", "methods", "idempotency_header", "generate_idempotency_key", "retry_after", "budget", "max_body"}
	breakerOptions   = []string{"failure_ratio", "min_requests", "consecutive_failures", "window", "open_for", "half_open_requests", "failure_status", "slow_call"}
	rateLimitOptions = []string{"rate", "burst", "max_wait", "key", "obey_retry_after"}
	fleetOptions     = []string{"redis", "prefix", "timeout"}
)

// Upper bounds of counts, so that none overflows what holds it.
const (
	maxCount    = 1_000_000
	maxHalfOpen = 10_000
	maxBurst    = 1_000_000_000
)

// blocks are this transport's own subdirectives.
var blocks = []string{"timeouts", "pool", "retry", "breaker", "rate_limit", "fleet", "idempotency", "hedge", "deadline", "fallback"}

// blockHints are names people write for our blocks.
var blockHints = map[string]string{
	"timeout": "timeouts", "retries": "retry", "retrying": "retry",
	"circuit": "breaker", "circuit_breaker": "breaker", "circuitbreaker": "breaker", "cb": "breaker",
	"pools": "pool", "connection_pool": "pool", "conn_pool": "pool",
	"ratelimit": "rate_limit", "rate_limits": "rate_limit", "rate": "rate_limit", "throttle": "rate_limit", "quota": "rate_limit",
	"redis": "fleet", "cluster": "fleet",
	"hedging": "hedge", "hedged": "hedge", "speculative": "hedge", "deadlines": "deadline", "timeout_header": "deadline",
	"idempotency_key": "idempotency", "idempotent": "idempotency", "dedup": "idempotency", "deduplicate": "idempotency",
	"stale": "fallback", "stale_if_error": "fallback", "cache": "fallback", "fallbacks": "fallback",
}

// blockHint returns the block of ours that name most likely meant, or
// "" when it is not close to one, or is a `transport http` option.
func blockHint(name string) string {
	if h, ok := blockHints[name]; ok {
		return h
	}
	if strings.Contains(name, "_") || len(name) < 4 {
		return "" // `transport http` options, or too short to tell
	}
	for _, b := range blocks {
		if editDistance(name, b) <= 2 {
			return b
		}
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func parseRateLimit(d *caddyfile.Dispenser) (*RateLimit, error) {
	rl := new(RateLimit)
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "rate":
			v, err := oneArg(d, "rate_limit", opt)
			if err != nil {
				return err
			}
			if _, perr := parseRate(v); perr != nil {
				return d.Errf("rate_limit: %v", perr)
			}
			rl.Rate = v
		case "burst":
			rl.Burst, err = integer(d, "rate_limit", opt, 1, maxBurst)
		case "max_wait":
			v, err := oneArg(d, "rate_limit", opt)
			if err != nil {
				return err
			}
			dur, perr := caddy.ParseDuration(v)
			if perr != nil || dur < 0 {
				return d.Errf("rate_limit: max_wait must be a duration >= 0 (0: never wait), got %q", v)
			}
			mw := caddy.Duration(dur)
			rl.MaxWait = &mw
		case "key":
			v, err := oneArg(d, "rate_limit", opt)
			if err != nil {
				return err
			}
			if !strings.Contains(v, "{") {
				return d.Errf("rate_limit: key must be a placeholder such as {http.request.header.X-Api-Key}, got %q", v)
			}
			rl.Key = v
		case "obey_retry_after":
			v, err := oneArg(d, "rate_limit", opt)
			if err != nil {
				return err
			}
			switch v {
			case "on":
				on := true
				rl.ObeyRetryAfter = &on
			case "off":
				off := false
				rl.ObeyRetryAfter = &off
			default:
				return d.Errf("rate_limit: obey_retry_after must be on or off, got %q", v)
			}
		default:
			return unknownOption(d, "rate_limit", opt, rateLimitOptions)
		}
		return err
	})
	if err == nil && rl.Rate == "" {
		return nil, d.Errf("rate_limit: rate is required, e.g. rate 100/s")
	}
	return rl, err
}

func parseFleet(d *caddyfile.Dispenser) (*Fleet, error) {
	f := new(Fleet)
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "redis":
			v, err := oneArg(d, "fleet", opt)
			if err != nil {
				return err
			}
			f.Redis = v
			if strings.Contains(v, "{") {
				return nil // a placeholder, such as {env.REDIS_URL}: checked when the config loads
			}
			if verr := (&Fleet{Redis: v}).validate(); verr != nil {
				return d.Errf("fleet: %v", verr)
			}
		case "prefix":
			f.Prefix, err = oneArg(d, "fleet", opt)
			if err == nil && !isToken(f.Prefix) {
				return d.Errf("fleet: prefix must be a name without spaces or separators, got %q", f.Prefix)
			}
		case "timeout":
			f.Timeout, err = duration(d, "fleet", opt, false)
		default:
			return unknownOption(d, "fleet", opt, fleetOptions)
		}
		return err
	})
	if err == nil && f.Redis == "" {
		return nil, d.Errf("fleet: redis is required, e.g. redis redis://127.0.0.1:6379/0")
	}
	return f, err
}

// isToken reports whether s is an RFC 9110 token, as methods and header
// names must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

var _ caddyfile.Unmarshaler = (*Transport)(nil)
