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
		c = &overrideCell{addr: addr}
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
		c = &overrideCell{addr: addr}
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

// clearOverride lifts the override of addr; it reports whether there
// was one.
func clearOverride(addr string) bool {
	overrides.Lock()
	defer overrides.Unlock()
	c := overrides.m[addr]
	if c == nil {
		return false
	}
	had := c.ov.Swap(nil) != nil
	c.dropIfIdle()
	return had
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
		if o, _ := c.current(now); o == nil {
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
	if _, ok := setOverrideFrom(upstream, mode, d, origin); !ok {
		return false
	}
	for i, b := range bs {
		b.forced(from[i], mode, d)
	}
	if len(bs) == 0 {
		fields := []zap.Field{zap.String("override", overrideName(mode))}
		if d > 0 {
			fields = append(fields, zap.Duration("for", d))
		}
		logPendingOverride(upstream, "breaker forced", fields...)
	}
	return true
}

// applyReset lifts the override of upstream, the fleet's trips kept for
// it, and resets its breakers; it reports whether there was anything to
// reset.
func applyReset(upstream string) bool {
	bs := lookupBreakers(upstream)
	had := clearOverride(upstream)
	forgetRemote(upstream)
	for _, b := range bs {
		b.reset()
	}
	if len(bs) == 0 && had {
		logPendingOverride(upstream, "breaker override lifted")
	}
	return had || len(bs) > 0
}
