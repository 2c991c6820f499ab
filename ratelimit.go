package resilient

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/time/rate"
)

// RateLimit paces the attempts sent to each upstream, as the quota of an
// external API asks: every attempt takes a token, retries included, so
// the upstream never sees more than Rate. A request waits for its token
// at most MaxWait (and never past timeouts.total); otherwise it ends
// rate_limited (429 with Retry-After) and nothing is sent. A 429 or 503
// with Retry-After pauses the upstream's bucket until then. Off unless
// configured.
type RateLimit struct {
	// Sustained attempts per upstream: a number per second, minute or
	// hour, such as `100/s`, `600/m` or `1000/h`. Required.
	Rate string `json:"rate,omitempty"`

	// Tokens the bucket holds: how many attempts may go at once after a
	// quiet spell. Default: one second of Rate, at least 1.
	Burst int `json:"burst,omitempty"`

	// The longest a request waits for a token; 0 never waits.
	// Default: `1s`.
	MaxWait *caddy.Duration `json:"max_wait,omitempty"`

	// A placeholder such as `{http.request.header.X-Tenant}`: one bucket
	// per upstream and value of it (per API key, say), and no
	// upstream-wide bucket on top. Default: none, one bucket per upstream.
	Key string `json:"key,omitempty"`

	// A 429 or 503 carrying Retry-After (seconds or an HTTP date, up to
	// 1h) empties the bucket until then: every request to that upstream
	// (with Key, of that key) waits or ends rate_limited, instead of
	// being sent into a limit the upstream announced. Default: `true`.
	ObeyRetryAfter *bool `json:"obey_retry_after,omitempty"`

	limit   rate.Limit // tokens per second
	maxWait time.Duration
	obey    bool
}

// maxRate bounds the rate, in tokens per second: past it neither a
// token's interval (in the fleet's microseconds) nor a second's burst
// can be counted.
const maxRate = 1_000_000

// maxPause bounds the pause a Retry-After may ask for.
const maxPause = time.Hour

// parseRate reads `<n>/s`, `<n>/m` or `<n>/h` as tokens per second.
func parseRate(s string) (rate.Limit, error) {
	n, unit, ok := strings.Cut(s, "/")
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	v, err := strconv.ParseFloat(n, 64)
	if !ok || per == 0 || err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate must be <n>/s, <n>/m or <n>/h, got %q", s)
	}
	if v <= 0 {
		return 0, fmt.Errorf("rate must be above zero, got %q", s)
	}
	perSecond := v / per.Seconds()
	if perSecond > maxRate {
		return 0, fmt.Errorf("rate %q is too large to count: at most %d/s", s, maxRate)
	}
	return rate.Limit(perSecond), nil
}

func (rl *RateLimit) provision() error {
	if rl.Rate == "" {
		return fmt.Errorf("rate is required, e.g. rate 100/s")
	}
	lim, err := parseRate(rl.Rate)
	if err != nil {
		return err
	}
	rl.limit = lim
	if rl.Burst == 0 {
		rl.Burst = max(1, int(math.Ceil(float64(lim))))
	}
	rl.maxWait = time.Second
	if rl.MaxWait != nil {
		rl.maxWait = time.Duration(*rl.MaxWait)
	}
	rl.obey = rl.ObeyRetryAfter == nil || *rl.ObeyRetryAfter
	return nil
}

func (rl *RateLimit) validate() error {
	if rl.Burst < 1 || rl.Burst > maxBurst {
		return fmt.Errorf("burst must be a whole number from 1 to %d, got %d", maxBurst, rl.Burst)
	}
	if rl.maxWait < 0 {
		return fmt.Errorf("max_wait must be >= 0, got %v", rl.maxWait)
	}
	if rl.Key != "" && !strings.Contains(rl.Key, "{") {
		return fmt.Errorf("key must be a placeholder such as {http.request.header.X-Api-Key}, got %q", rl.Key)
	}
	return nil
}

// key identifies the settings, so that a reload that keeps them keeps
// the buckets (a reload must not hand out a fresh burst).
func (rl *RateLimit) key() string {
	return fmt.Sprintf("%v|%d|%s", float64(rl.limit), rl.Burst, rl.Key)
}

// tokens is a token bucket as the request path takes from it: this
// instance's own, or the fleet's (see fleetBucket).
type tokens interface {
	// take reserves a token as of now, and returns how long until it is
	// due. When it would be due later than maxWait, nothing is taken,
	// ok is false and wait says when one would be there.
	take(now time.Time, maxWait time.Duration) (tok token, wait time.Duration, ok bool)
	// pause empties the bucket until until.
	pause(until time.Time)
}

// bucket is one token bucket, on golang.org/x/time/rate, with a pause.
//
// x/time/rate must never be asked about a time earlier than one it was
// asked about before (it would count the tokens between them twice), so
// every call goes through the bucket's latest time, which a pause moves
// ahead.
type bucket struct {
	limit rate.Limit
	burst int
	used  atomic.Int64 // unix nanos of the latest take

	mu     sync.Mutex
	lim    *rate.Limiter
	latest time.Time // the latest time lim was asked about
	paused time.Time // no token before this
	epoch  uint64    // bumped by a pause: older reservations are void
}

func newBucket(limit rate.Limit, burst int) *bucket {
	return &bucket{limit: limit, burst: burst, lim: rate.NewLimiter(limit, burst)}
}

// token is a reserved token: of a local bucket, or of the fleet's.
type token struct {
	b     *bucket
	r     *rate.Reservation
	epoch uint64
	f     *fleetBucket // the fleet's bucket it was taken from; nil: a local one
}

// take implements tokens.
func (b *bucket) take(now time.Time, maxWait time.Duration) (tok token, wait time.Duration, ok bool) {
	b.used.Store(now.UnixNano())
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.at(now)
	r := b.lim.ReserveN(t, 1)
	wait = r.DelayFrom(now)
	if wait > maxWait {
		r.CancelAt(t)
		return token{}, wait, false
	}
	return token{b: b, r: r, epoch: b.epoch}, wait, true
}

// at returns the time to ask lim about for now. Called with mu held.
func (b *bucket) at(now time.Time) time.Time {
	t := now
	if t.Before(b.paused) {
		t = b.paused
	}
	if t.Before(b.latest) {
		t = b.latest
	}
	b.latest = t
	return t
}

// cancel gives back a token that will not be used: the client left
// while it waited, or a hedge was refused or never left.
func (tok token) cancel() {
	if tok.f != nil {
		tok.f.refund()
		return
	}
	b := tok.b
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if tok.epoch != b.epoch {
		return // a pause emptied the bucket since: nothing to give back
	}
	now := b.at(time.Now())
	if tok.r.DelayFrom(now) > 0 {
		tok.r.CancelAt(now)
		return
	}
	// x/time/rate takes a reservation that is due as spent, and gives
	// nothing back for it: put the token back by hand (a reservation of
	// -1), then set the burst again, which caps what the bucket holds
	b.lim.ReserveN(now, -1)
	b.lim.SetBurstAt(now, b.burst)
}

// void reports whether a pause came since the token was taken: it no
// longer stands, and must be taken again.
func (tok token) void() bool {
	if tok.b == nil {
		return false
	}
	tok.b.mu.Lock()
	defer tok.b.mu.Unlock()
	return tok.epoch != tok.b.epoch
}

// setRate changes the bucket's rate and size (a fleet instance's share
// of the fleet's rate, as the number of live instances changes).
func (b *bucket) setRate(now time.Time, limit rate.Limit, burst int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if limit == b.limit && burst == b.burst {
		return
	}
	t := b.at(now)
	b.lim.SetLimitAt(t, limit)
	b.lim.SetBurstAt(t, burst)
	b.limit, b.burst = limit, burst
}

// pause empties the bucket until until: no token is due before then,
// and from then on the bucket refills at the rate, starting empty.
func (b *bucket) pause(until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !until.After(b.paused) || !until.After(b.latest) {
		return
	}
	b.paused = until
	lim := rate.NewLimiter(b.limit, b.burst)
	lim.ReserveN(until, b.burst) // drained at until
	b.lim, b.latest = lim, until
	b.epoch++
}

// idle reports whether the bucket is as a new one would be (full, not
// paused) and unused since before: dropping it changes nothing.
func (b *bucket) idle(before time.Time) bool {
	if b.used.Load() >= before.UnixNano() {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.at(time.Now())
	return !now.Before(b.paused) && b.lim.TokensAt(now) >= float64(b.burst)
}

// maxBuckets bounds the buckets of one upstream (one per key value).
const maxBuckets = 10_000

// limiter holds the buckets of one upstream under one rate_limit
// setting, shared by every transport that has both, across reloads.
type limiter struct {
	key      string // in the registry
	upstream string
	cfg      *RateLimit
	fleet    atomic.Pointer[fleetLink] // nil outside a fleet; see relink

	mu      sync.RWMutex
	buckets map[string]*bucket // by key value; "" without a key
	shared  map[string]*fleetBucket
}

// limiters holds every limiter in use, across config reloads.
var limiters = caddy.NewUsagePool()

// acquireLimiter returns the shared limiter of upstream under cfg; each
// call must be paired with release.
func acquireLimiter(cfg *RateLimit, upstream string, fl *fleetLink) *limiter {
	key := upstream + "|" + cfg.key()
	if fl != nil {
		key += "|" + fl.id
	}
	v, _, _ := limiters.LoadOrNew(key, func() (caddy.Destructor, error) {
		l := &limiter{key: key, upstream: upstream, cfg: cfg,
			buckets: map[string]*bucket{}, shared: map[string]*fleetBucket{}}
		l.fleet.Store(fl)
		return l, nil
	})
	l := v.(*limiter)
	if fl != nil {
		// not in the constructor, which holds the pool's entry locked
		l.fleet.Store(fleetLinks.current(fl))
	}
	return l
}

// tokensFor returns the bucket requests with key value v take from: the
// fleet's when in a fleet, else this instance's.
func (l *limiter) tokensFor(v string) tokens {
	if l.fleet.Load() == nil {
		return l.bucketFor(v)
	}
	l.mu.RLock()
	f := l.shared[v]
	l.mu.RUnlock()
	if f != nil {
		return f
	}
	share := l.bucketFor(v)
	l.mu.Lock()
	defer l.mu.Unlock()
	if f = l.shared[v]; f == nil {
		if len(l.shared) >= maxBuckets {
			clear(l.shared) // they hold nothing of their own: the buckets are in Redis
		}
		f = newFleetBucket(l, v, share)
		l.shared[v] = f
	}
	return f
}

// Destruct implements caddy.Destructor.
func (l *limiter) Destruct() error { return nil }

// release drops a reference; the registry keeps the limiter for as long
// as its buckets hold something a new one would not (a pause, tokens
// spent), so a reload cannot hand out a fresh burst.
func (l *limiter) release() {
	if d := l.linger(time.Now()); d > 0 {
		time.AfterFunc(d, func() { _, _ = limiters.Delete(l.key) })
		return
	}
	_, _ = limiters.Delete(l.key)
}

func (l *limiter) linger(now time.Time) time.Duration {
	refill := time.Duration(float64(l.cfg.Burst) / float64(l.cfg.limit) * float64(time.Second))
	d := refill
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, b := range l.buckets {
		b.mu.Lock()
		if left := b.paused.Sub(now) + refill; left > d {
			d = left
		}
		b.mu.Unlock()
	}
	return d
}

// bucketFor returns the bucket of key value v.
func (l *limiter) bucketFor(v string) *bucket {
	l.mu.RLock()
	b := l.buckets[v]
	l.mu.RUnlock()
	if b != nil {
		return b
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b = l.buckets[v]; b != nil {
		return b
	}
	if len(l.buckets) >= maxBuckets {
		l.shrink()
	}
	b = newBucket(l.cfg.limit, l.cfg.Burst)
	l.buckets[v] = b
	return b
}

// shrink drops the buckets a new one would stand in for; if that is not
// enough, the least recently used. Called with mu held.
func (l *limiter) shrink() {
	before := time.Now().Add(-time.Minute)
	for v, b := range l.buckets {
		if b.idle(before) {
			delete(l.buckets, v)
		}
	}
	if len(l.buckets) < maxBuckets {
		return
	}
	type use struct {
		v string
		t int64
	}
	all := make([]use, 0, len(l.buckets))
	for v, b := range l.buckets {
		all = append(all, use{v, b.used.Load()})
	}
	slices.SortFunc(all, func(a, b use) int { return int(a.t - b.t) })
	for _, u := range all[:len(all)/4] {
		delete(l.buckets, u.v)
	}
}
