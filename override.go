package resilient

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Operator overrides (force_open, force_close from the admin API) are
// state of their own, kept per upstream address apart from the
// breakers: an operator can open a provider's breaker before a known
// outage, when the upstream has not carried traffic yet; an override
// outlives config reloads, and applies to every breaker of its upstream
// as soon as one exists, until it runs out or a reset lifts it.

// override is an operator's decision; it wins over the breakers' own
// state.
type override struct {
	mode   forceMode
	until  time.Time // zero: until reset
	at     time.Time // when it was given
	origin string    // the fleet instance it came from; "" when given here
}

type forceMode uint8

const (
	forceNone forceMode = iota
	forceOpen
	forceClosed
)

func overrideName(m forceMode) string {
	switch m {
	case forceOpen:
		return "open"
	case forceClosed:
		return "closed"
	}
	return "none"
}

// overrideCell holds the override of one upstream address. Breakers of
// that address keep a pointer to it, so that asking for the override on
// the request path is one atomic load.
type overrideCell struct {
	addr string
	ov   atomic.Pointer[override] // nil: none
	refs int                      // breakers holding it; under overrides' lock
	// the upstream's metric label, held while the cell lives: an
	// upstream no breaker has seen yet reads its own breaker_state under
	// an override, even when labels are at their cap
	label string
}

// maxOverrides bounds the overrides kept for upstreams no breaker uses.
const maxOverrides = 1000

var overrides = struct {
	sync.Mutex
	m map[string]*overrideCell
}{m: map[string]*overrideCell{}}

// acquireOverride returns the cell of addr for a new breaker.
func acquireOverride(addr string) *overrideCell {
	overrides.Lock()
	defer overrides.Unlock()
	c := overrides.m[addr]
	if c == nil {
		c = &overrideCell{addr: addr, label: holdLabel(addr)}
		overrides.m[addr] = c
	}
	c.refs++
	return c
}

// release drops a breaker's hold on c; a cell with no breaker and no
// override goes.
func (c *overrideCell) release() {
	overrides.Lock()
	defer overrides.Unlock()
	c.refs--
	c.dropIfIdle()
}

// dropIfIdle removes c when nothing needs it. Called with overrides'
// lock held.
func (c *overrideCell) dropIfIdle() {
	if c.refs <= 0 && c.ov.Load() == nil && overrides.m[c.addr] == c {
		delete(overrides.m, c.addr)
		releaseLabel(c.addr, c.label)
	}
}

// current returns the override in force at now. One that ran out is
// cleared, and ended reports that this call cleared it.
func (c *overrideCell) current(now time.Time) (o *override, ended *override) {
	o = c.ov.Load()
	if o == nil {
		return nil, nil
	}
	if !o.until.IsZero() && !now.Before(o.until) {
		if c.ov.CompareAndSwap(o, nil) {
			return nil, o
		}
		return nil, nil
	}
	return o, nil
}

// setOverride gives addr an override for d (0: until reset). It fails
// when too many upstreams without breakers hold one.
func setOverride(addr string, mode forceMode, d time.Duration) (*overrideCell, bool) {
	return setOverrideFrom(addr, mode, d, "")
}

// setOverrideFrom is setOverride for an override that origin, another
// instance of the fleet, gave.
func setOverrideFrom(addr string, mode forceMode, d time.Duration, origin string) (*overrideCell, bool) {
	overrides.Lock()
	defer overrides.Unlock()
	c := overrides.m[addr]
	if c == nil {
		unused := 0
		for _, o := range overrides.m {
			if o.refs <= 0 {
				unused++
			}
		}
		if unused >= maxOverrides {
			return nil, false
		}
		c = &overrideCell{addr: addr, label: holdLabel(addr)}
		overrides.m[addr] = c
	}
	now := time.Now()
	o := &override{mode: mode, at: now, origin: origin}
	if d > 0 {
		o.until = now.Add(d)
	}
	c.ov.Store(o)
	return c, true
}

// clearOverride lifts the override of addr; it returns the one lifted,
// if any.
func clearOverride(addr string) *override {
	overrides.Lock()
	defer overrides.Unlock()
	c := overrides.m[addr]
	if c == nil {
		return nil
	}
	had := c.ov.Swap(nil)
	c.dropIfIdle()
	return had
}

// pendingMode returns the mode of the override in force for addr, as
// requests to an upstream no breaker has seen get it.
func pendingMode(addr string, now time.Time) forceMode {
	overrides.Lock()
	defer overrides.Unlock()
	if c := overrides.m[addr]; c != nil {
		if o, _ := c.current(now); o != nil {
			return o.mode
		}
	}
	return forceNone
}

// pendingState is the state requests to an upstream no breaker has seen
// get under an override of mode m.
func pendingState(m forceMode) string {
	if m == forceOpen {
		return "open"
	}
	return "closed"
}

// pendingEnded logs and counts the end of the override of an upstream
// no breaker has seen: requests to it are let through again.
func pendingEnded(addr string, ended *override) {
	logPendingOverride(addr, "breaker override ended",
		zap.String("from", pendingState(ended.mode)), zap.String("to", "closed"))
	if ended.mode == forceOpen {
		breakerChanged(addr, "closed")
	}
}

// expireOverride runs when the override given to addr at at should have
// run out: its end is logged and counted then, with no request needed.
func expireOverride(addr string, at time.Time) {
	for _, b := range lookupBreakers(addr) {
		b.state()
	}
	overrides.Lock()
	defer overrides.Unlock()
	c := overrides.m[addr]
	if c == nil || c.refs > 0 {
		return
	}
	if o := c.ov.Load(); o == nil || !o.at.Equal(at) {
		return // lifted, or given anew
	}
	if _, ended := c.current(time.Now()); ended != nil {
		pendingEnded(addr, ended)
		c.dropIfIdle()
	}
}

// pendingOverrides returns the overrides in force for upstreams that no
// breaker has seen yet, by address.
func pendingOverrides(now time.Time) []*overrideCell {
	overrides.Lock()
	defer overrides.Unlock()
	var out []*overrideCell
	for _, c := range overrides.m {
		if c.refs > 0 {
			continue
		}
		if o, ended := c.current(now); o == nil {
			if ended != nil {
				pendingEnded(c.addr, ended)
			}
			c.dropIfIdle()
			continue
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].addr < out[j].addr })
	return out
}

// overrideLogger logs what happens to an override when no breaker of
// its upstream exists to say it.
func overrideLogger() *zap.Logger {
	return caddy.Log().Named("http.reverse_proxy.transport.resilient")
}

// logPendingOverride logs an override given to an upstream no breaker
// has seen yet.
func logPendingOverride(addr, msg string, fields ...zap.Field) {
	if c := overrideLogger().Check(zapcore.WarnLevel, msg); c != nil {
		c.Write(append([]zap.Field{zap.String("upstream", addr), zap.Bool("seen", false)}, fields...)...)
	}
}

// applyForce gives upstream an override (origin: the fleet instance it
// came from, "" when given here), and tells its breakers, or the log
// when no breaker has seen it yet. It fails when too many upstreams
// without breakers hold one.
func applyForce(upstream string, mode forceMode, d time.Duration, origin string) bool {
	bs := lookupBreakers(upstream)
	from := make([]string, len(bs))
	for i, b := range bs {
		from[i] = b.state()
	}
	pendingFrom := pendingState(pendingMode(upstream, time.Now()))
	c, ok := setOverrideFrom(upstream, mode, d, origin)
	if !ok {
		return false
	}
	if d > 0 {
		at := c.ov.Load().at
		time.AfterFunc(d+time.Millisecond, func() { expireOverride(upstream, at) })
	}
	for i, b := range bs {
		b.forced(from[i], mode, d)
	}
	if len(bs) == 0 {
		to := pendingState(mode)
		fields := []zap.Field{zap.String("override", overrideName(mode)),
			zap.String("from", pendingFrom), zap.String("to", to)}
		if d > 0 {
			fields = append(fields, zap.Duration("for", d))
		}
		logPendingOverride(upstream, "breaker forced", fields...)
		if to != pendingFrom {
			breakerChanged(upstream, to)
		}
	}
	return true
}

// applyReset lifts the override of upstream, the fleet's trips kept for
// it, and resets its breakers; it reports whether there was anything to
// reset.
func applyReset(upstream string) bool {
	bs := lookupBreakers(upstream)
	from := make([]string, len(bs))
	for i, b := range bs {
		from[i] = b.state()
	}
	had := clearOverride(upstream)
	forgetRemote(upstream)
	for i, b := range bs {
		b.reset(from[i])
	}
	if len(bs) == 0 && had != nil {
		logPendingOverride(upstream, "breaker override lifted",
			zap.String("from", pendingState(had.mode)), zap.String("to", "closed"))
		if had.mode == forceOpen {
			breakerChanged(upstream, "closed")
		}
	}
	return had != nil || len(bs) > 0
}
