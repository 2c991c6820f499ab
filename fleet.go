package resilient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-resilient/resilient/fleet"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"
)

// Fleet makes several Caddy instances that share a Redis and a prefix
// act as one gateway: a breaker that opens on one instance opens on all
// of them, the rate limit holds for the fleet as a whole (a Retry-After
// seen by one pauses all), and an operator's override given to one
// instance applies to every one. Redis is never in the way: no request
// waits on it longer than Timeout, and when it cannot answer each
// instance goes on alone (its own breakers, a share of the rate) and
// rejoins by itself. Off unless configured.
type Fleet struct {
	// The Redis server: redis:// or rediss:// (TLS), user:password@
	// allowed, a database number as the path. The password is never
	// logged or shown by this module; Caddy's own /config/ shows the
	// config as written, so a URL with a password is best given as an
	// environment placeholder such as `{env.REDIS_URL}`, which is
	// expanded when the config loads. Required.
	Redis string `json:"redis,omitempty"`

	// Instances with the same redis and prefix form one fleet.
	// Default: `resilient`.
	Prefix string `json:"prefix,omitempty"`

	// How long one Redis operation may take; past it the instance acts
	// alone. Default: `50ms`.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	link *fleetLink
}

func (f *Fleet) options() fleet.Options {
	// {env.*} placeholders: the secret stays out of the config
	url := caddy.NewReplacer().ReplaceKnown(f.Redis, "")
	return fleet.Options{URL: url, Prefix: f.Prefix, Timeout: time.Duration(f.Timeout)}
}

func (f *Fleet) validate() error {
	if f.Redis == "" {
		return fmt.Errorf("redis is required, e.g. redis redis://127.0.0.1:6379/0")
	}
	if f.Timeout < 0 {
		return fmt.Errorf("timeout must be > 0, got %v", time.Duration(f.Timeout))
	}
	if err := f.options().Validate(); err != nil {
		// the fleet package names itself; the callers name the block
		return errors.New(strings.TrimPrefix(err.Error(), "fleet: "))
	}
	return nil
}

// fleetLink is this process's membership of one fleet, as the breakers
// and limiters of the transports in it use it.
type fleetLink struct {
	id      string // names the fleet in registry keys; no secret in it
	member  *fleet.Member
	timeout time.Duration
	logger  *zap.Logger
}

// fleetID names a fleet without its URL's secrets.
func fleetID(o fleet.Options) string {
	sum := sha256.Sum256([]byte(o.URL + "\x00" + o.Prefix))
	return hex.EncodeToString(sum[:8])
}

// join makes the transport a member of its fleet.
func (f *Fleet) join(logger *zap.Logger) error {
	opts := f.options()
	m, err := fleet.Join(opts, logger)
	if err != nil {
		return err
	}
	timeout := time.Duration(f.Timeout)
	if timeout <= 0 {
		timeout = fleet.DefaultTimeout
	}
	l := &fleetLink{id: fleetID(opts), member: m, timeout: timeout, logger: logger}
	fleetLinks.add(l)
	f.link = l
	return nil
}

// leave undoes join; it copes with a link never made.
func (f *Fleet) leave() {
	l := f.link
	if l == nil {
		return
	}
	f.link = nil
	fleetLinks.remove(l)
	l.member.Release()
}

// linkSet is a set of fleet links, and the fleet's messages their
// members follow.
type linkSet struct {
	sync.Mutex
	m map[*fleetLink]struct{}
	// per member: its links, and how to stop following its messages
	follow map[*fleet.Member]*following
	// per fleet id, the link of the config that joined it last, which
	// the breakers and limiters of that fleet use: a reload that changes
	// the fleet's timeout makes a new member, and none of them may go on
	// with the old one, which stops when the old config does
	latest map[string]*fleetLink
}

type following struct {
	links int
	stop  func()
}

// fleetLinks are the fleets this process is in, for the admin API to
// share overrides with.
var fleetLinks = &linkSet{m: map[*fleetLink]struct{}{}, follow: map[*fleet.Member]*following{},
	latest: map[string]*fleetLink{}}

// current returns the link of l's fleet that its breakers and limiters
// use now.
func (fl *linkSet) current(l *fleetLink) *fleetLink {
	fl.Lock()
	defer fl.Unlock()
	if c := fl.latest[l.id]; c != nil {
		return c
	}
	return l
}

// relink moves the breakers and limiters of fleet id to the link that
// joined it last. Configs load one at a time, so joins do not race.
func relink(id string) {
	fleetLinks.Lock()
	l := fleetLinks.latest[id]
	fleetLinks.Unlock()
	if l == nil {
		return
	}
	for _, b := range allBreakers() {
		if c := b.fleet.Load(); c != nil && c.id == id {
			b.fleet.Store(l)
		}
	}
	limiters.Range(func(_, v any) bool {
		lim := v.(*limiter)
		if c := lim.fleet.Load(); c != nil && c.id == id {
			lim.fleet.Store(l)
		}
		return true
	})
}

// add puts l in the set. The member's messages are followed from its
// first link to its last, once whatever the number of transports in the
// fleet, and across config reloads: they apply to the breakers of the
// fleet, not of one transport (a reload keeps the breakers, and makes
// new transports).
func (fl *linkSet) add(l *fleetLink) {
	fl.Lock()
	defer func() {
		fl.Unlock()
		// outside the lock: the registries' locks are taken before it
		relink(l.id)
	}()
	fl.m[l] = struct{}{}
	fl.latest[l.id] = l
	f := fl.follow[l.member]
	if f == nil {
		id := l.id
		stopB := l.member.OnBreaker(func(s fleet.BreakerState) { followBreaker(id, s) })
		stopO := l.member.OnOverride(followOverride)
		f = &following{stop: func() { stopB(); stopO() }}
		fl.follow[l.member] = f
	}
	f.links++
}

func (fl *linkSet) remove(l *fleetLink) {
	fl.Lock()
	delete(fl.m, l)
	next := false
	if fl.latest[l.id] == l {
		delete(fl.latest, l.id)
		for o := range fl.m {
			if o.id == l.id {
				fl.latest[l.id], next = o, true
				break
			}
		}
	}
	var stop func()
	if f := fl.follow[l.member]; f != nil {
		if f.links--; f.links == 0 {
			delete(fl.follow, l.member)
			stop = f.stop
		}
	}
	fl.Unlock()
	if next {
		relink(l.id)
	}
	if stop != nil {
		stop() // waits for a callback under way, which takes no lock of fl
	}
}

// members returns one link per distinct member.
func (fl *linkSet) members() []*fleetLink {
	fl.Lock()
	defer fl.Unlock()
	seen := map[*fleet.Member]bool{}
	var out []*fleetLink
	for l := range fl.m {
		if !seen[l.member] {
			seen[l.member] = true
			out = append(out, l)
		}
	}
	return out
}

// remoteState is a breaker state another instance of the fleet
// reached: while it lasts, this instance's breaker follows it.
type remoteState struct {
	state  string // open or half_open
	until  time.Time
	origin string
	// the open period the other instance is in (open), or that just
	// ended (half_open); 0 when it did not say
	period time.Duration
}

// followedPeriod is how long a half-open state followed from the fleet
// lasts should the instance that probes never say how the probes went:
// as long as the open period before it, as with a breaker of its own.
func (b *breaker) followedPeriod(rs *remoteState) time.Duration {
	if rs.period > 0 {
		return rs.period
	}
	return time.Duration(b.cfg.OpenFor)
}

// followBreaker applies a state another instance of fleet id published
// to the breakers of this instance in that fleet that have the same
// upstream and settings. A breaker the upstream has none of yet takes
// it when it is made.
func followBreaker(id string, s fleet.BreakerState) {
	var rs *remoteState
	switch s.State {
	case fleet.StateOpen:
		rs = &remoteState{state: "open", until: s.Until, origin: s.Origin, period: s.Period}
	case fleet.StateHalfOpen:
		rs = &remoteState{state: "half_open", origin: s.Origin, period: s.Period} // until set per breaker
	}
	key := id + "|" + s.Upstream + "|" + s.Settings
	remoteStates.Lock()
	if rs != nil && rs.state == "open" {
		remoteStates.m[key] = rs
	} else {
		delete(remoteStates.m, key)
	}
	remoteStates.Unlock()
	for _, b := range lookupBreakers(s.Upstream) {
		if fl := b.fleet.Load(); fl != nil && fl.id == id && b.cfg.key() == s.Settings {
			b.follow(rs)
		}
	}
}

// remoteStates are the open states of the fleet, kept for breakers made
// after they came; by fleet, upstream and settings. They end by
// themselves.
var remoteStates = struct {
	sync.Mutex
	m map[string]*remoteState
}{m: map[string]*remoteState{}}

// pendingRemote returns the fleet's open state for a new breaker.
func pendingRemote(l *fleetLink, upstream, settings string) *remoteState {
	key := l.id + "|" + upstream + "|" + settings
	remoteStates.Lock()
	defer remoteStates.Unlock()
	rs := remoteStates.m[key]
	now := time.Now()
	for k, s := range remoteStates.m { // drop the ended ones
		if !now.Before(s.until) {
			delete(remoteStates.m, k)
		}
	}
	if rs == nil || !now.Before(rs.until) {
		return nil
	}
	return rs
}

// forgetRemote drops the fleet's open states of upstream kept for
// breakers made later: an operator reset lifts them.
func forgetRemote(upstream string) {
	remoteStates.Lock()
	defer remoteStates.Unlock()
	for k := range remoteStates.m {
		if _, rest, _ := strings.Cut(k, "|"); strings.HasPrefix(rest, upstream+"|") {
			delete(remoteStates.m, k)
		}
	}
}

// followOverride applies an operator's override given to another
// instance of the fleet.
func followOverride(o fleet.Override) {
	switch o.Mode {
	case fleet.ModeReset:
		applyReset(o.Upstream)
	case fleet.ModeForceOpen, fleet.ModeForceClose:
		mode := forceOpen
		if o.Mode == fleet.ModeForceClose {
			mode = forceClosed
		}
		var d time.Duration
		if !o.Until.IsZero() {
			if d = time.Until(o.Until); d <= 0 {
				return
			}
		}
		applyForce(o.Upstream, mode, d, o.Origin)
	}
}

// shareOverride gives an override to every fleet this process is in;
// it returns those it could not reach.
func shareOverride(upstream string, mode forceMode, d time.Duration, reset bool) []error {
	o := fleet.Override{Upstream: upstream, Mode: fleet.ModeForceOpen}
	switch {
	case reset:
		o.Mode = fleet.ModeReset
	case mode == forceClosed:
		o.Mode = fleet.ModeForceClose
	}
	if d > 0 && !reset {
		o.Until = time.Now().Add(d)
	}
	var errs []error
	for _, l := range fleetLinks.members() {
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		err := l.member.PublishOverride(ctx, o)
		cancel()
		if err != nil {
			errs = append(errs, err)
			if c := l.logger.Check(zapcore.WarnLevel, "override applied to this instance only: the fleet could not be told"); c != nil {
				c.Write(zap.String("upstream", upstream), zap.Error(err))
			}
		}
	}
	return errs
}

// fleetBucket is the fleet's token bucket of one upstream (and key
// value), in Redis: the rate holds for the fleet as a whole. When Redis
// cannot answer within the timeout, the instance takes from a local
// bucket at its share of the rate (the rate over the instances it last
// saw live), and says so.
type fleetBucket struct {
	l     *limiter
	key   string  // in Redis: a digest, as the key value may be a secret
	share *bucket // the local fallback
	alone atomic.Bool
}

func newFleetBucket(l *limiter, v string, share *bucket) *fleetBucket {
	sum := sha256.Sum256([]byte(l.key + "\x00" + v))
	return &fleetBucket{l: l, key: "tokens:" + hex.EncodeToString(sum[:16]), share: share}
}

func (f *fleetBucket) limit() fleet.Limit {
	return fleet.Limit{Rate: float64(f.l.cfg.limit), Burst: f.l.cfg.Burst}
}

// take implements tokens.
func (f *fleetBucket) take(now time.Time, maxWait time.Duration) (token, time.Duration, bool) {
	link := f.l.fleet.Load()
	ctx, cancel := context.WithTimeout(context.Background(), link.timeout)
	wait, retryAfter, ok, err := link.member.Reserve(ctx, f.key, f.limit(), maxWait)
	cancel()
	if err == nil {
		if f.alone.Swap(false) {
			f.log(zapcore.InfoLevel, "rate limit: back on the fleet's bucket", nil)
		}
		if !ok {
			return token{}, retryAfter, false
		}
		return token{f: f}, wait, true
	}
	live := max(1, link.member.Live())
	if !f.alone.Swap(true) {
		f.log(zapcore.WarnLevel, "rate limit: the fleet's bucket did not answer; this instance takes its share alone", err,
			zap.Int("live_instances", live))
	}
	cfg := f.l.cfg
	f.share.setRate(now, cfg.limit/rate.Limit(live), max(1, cfg.Burst/live))
	return f.share.take(now, maxWait)
}

// refund gives a token taken from the fleet's bucket back to it: the
// client it was for left while it waited. A refund Redis does not take
// within the timeout is lost: that token of the fleet's rate goes
// unused, as it would have without refunds.
func (f *fleetBucket) refund() {
	link := f.l.fleet.Load()
	ctx, cancel := context.WithTimeout(context.Background(), link.timeout)
	defer cancel()
	if err := link.member.Refund(ctx, f.key, f.limit()); err != nil {
		f.log(zapcore.DebugLevel, "rate limit: a token could not be given back to the fleet's bucket", err)
	}
}

// pause implements tokens: the pause holds for the whole fleet, and for
// the local share should Redis be gone.
func (f *fleetBucket) pause(until time.Time) {
	f.share.pause(until)
	link := f.l.fleet.Load()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), link.timeout)
		defer cancel()
		if err := link.member.Pause(ctx, f.key, f.limit(), until); err != nil {
			f.log(zapcore.WarnLevel, "rate limit: the fleet could not be told of a Retry-After pause", err)
		}
	}()
}

func (f *fleetBucket) log(lvl zapcore.Level, msg string, err error, fields ...zap.Field) {
	logger := f.l.fleet.Load().logger
	if c := logger.Check(lvl, msg); c != nil {
		fields = append(fields, zap.String("upstream", f.l.upstream))
		if err != nil {
			fields = append(fields, zap.Error(err))
		}
		c.Write(fields...)
	}
}
