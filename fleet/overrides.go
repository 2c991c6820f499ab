package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Override modes, as Override.Mode spells them: the admin API's verbs.
const (
	ModeForceOpen  = "force_open"
	ModeForceClose = "force_close"
	ModeReset      = "reset"
)

// Override is an operator's order about an upstream, given to one
// instance's admin API and meant for the whole fleet: an operator who
// opens a provider's breaker before a known outage means every gateway.
type Override struct {
	// Upstream is the dial address, host:port.
	Upstream string
	// Mode is ModeForceOpen, ModeForceClose or ModeReset (which lifts
	// the override).
	Mode string
	// Until is when the override ends; zero: when reset. It travels as a
	// time left, so the instances' clocks need not agree.
	Until time.Time
	// Origin is the ID of the member that published it;
	// PublishOverride fills it in.
	Origin string
}

// overrideWire is how an Override travels and is kept in Redis.
type overrideWire struct {
	Upstream string `json:"upstream"`
	Mode     string `json:"mode"`
	TTL      int64  `json:"ttl_ms,omitempty"` // ms left, when sent; absent: until reset
	Origin   string `json:"origin"`
}

// overrideSide is a member's share of the overrides: those it knows of,
// its own and the fleet's (to restore them if Redis loses its data), and
// the callbacks that follow the others.
type overrideSide struct {
	mu    sync.Mutex
	known map[string]Override // by upstream
	cbs   callbacks[Override]
}

func (o *overrideSide) init() { o.known = make(map[string]Override) }

func (o Override) check() error {
	switch {
	case o.Upstream == "":
		return errors.New("fleet: override without an upstream")
	case o.Mode != ModeForceOpen && o.Mode != ModeForceClose && o.Mode != ModeReset:
		return errors.New("fleet: unknown override mode " + o.Mode)
	case o.Mode != ModeReset && !o.Until.IsZero() && !time.Now().Before(o.Until):
		return errEnded
	}
	return nil
}

// PublishOverride gives the override to the whole fleet: it is kept in
// Redis (until Until, or until reset; reset deletes it) for members that
// join later, and published to those there now. It waits at most the
// timeout, and fails at once while Redis is down: the caller then applies
// the override to this instance alone and says so.
func (m *Member) PublishOverride(ctx context.Context, o Override) error {
	if err := o.check(); err != nil {
		return err
	}
	o.Origin = m.reg.id
	if !m.health.connected.Load() {
		return ErrNotConnected
	}
	rctx, cancel := context.WithTimeout(ctx, m.opts.Timeout)
	defer cancel()
	if err := m.writeOverride(rctx, o, false); err != nil {
		if errors.Is(err, errEnded) {
			return err
		}
		return m.fail(ctx, opPublish, err)
	}
	m.overrides.remember(o)
	return nil
}

// errEnded refuses an override whose end has passed.
var errEnded = errors.New("fleet: override ends in the past")

// writeOverride keeps o in its key (until its end, or until reset; a
// reset deletes the key) and publishes it.
func (m *Member) writeOverride(ctx context.Context, o Override, onlyIfAbsent bool) error {
	w := overrideWire{Upstream: o.Upstream, Mode: o.Mode, Origin: o.Origin}
	ttl := time.Duration(0) // until reset
	switch {
	case o.Mode == ModeReset:
		ttl = -1
	case !o.Until.IsZero():
		if ttl = time.Until(o.Until); ttl <= 0 {
			return errEnded
		}
		w.TTL = ttlMillis(o.Until)
	}
	payload, err := json.Marshal(w)
	if err != nil {
		return err
	}
	return m.write(ctx, m.names.override(o.Upstream), m.names.overrideIndex, m.names.overrideChannel, string(payload), ttl, onlyIfAbsent)
}

// OnOverride registers fn to follow the overrides given to the other
// members, as OnBreaker does for breakers: in order, never this member's
// own, with the overrides in force replayed on each (re)connect and once
// soon after registering. fn is never called once stop returns; stop
// must not be called from fn.
func (m *Member) OnOverride(fn func(Override)) (stop func()) {
	cb := m.overrides.cbs.add(fn)
	m.subs.mu.Lock()
	m.subs.pendingOverrides = append(m.subs.pendingOverrides, cb)
	m.subs.mu.Unlock()
	return func() { m.overrides.cbs.remove(cb) }
}

// remember keeps track of the overrides in force.
func (o *overrideSide) remember(ov Override) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ov.Mode == ModeReset {
		delete(o.known, ov.Upstream)
	} else {
		o.known[ov.Upstream] = ov
	}
}

// restore writes back the overrides in force that Redis lost, without
// overwriting what others wrote since. Every member does it, so an
// override outlives both a Redis restart and the instance that gave it.
func (o *overrideSide) restore(m *Member) {
	o.mu.Lock()
	var live []Override
	for up, ov := range o.known {
		if ov.Until.IsZero() || time.Now().Before(ov.Until) {
			live = append(live, ov)
		} else {
			delete(o.known, up)
		}
	}
	o.mu.Unlock()
	for _, ov := range live {
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
		err := m.writeOverride(ctx, ov, true)
		cancel()
		if err != nil && !errors.Is(err, errEnded) {
			countError(opPublish)
			return
		}
	}
}

// receiveOverride decodes an override (a message, or a key replayed with
// its TTL), remembers it, and hands it to cbs unless this member gave it.
func (m *Member) receiveOverride(payload string, pttl int64, replayed bool, cbs []*callback[Override]) {
	var w overrideWire
	if err := json.Unmarshal([]byte(payload), &w); err != nil {
		m.logger().Debug("fleet: bad override message", zap.Error(err))
		return
	}
	if replayed {
		w.TTL = max(pttl, 0) // -1: no expiry
	}
	o := Override{Upstream: w.Upstream, Mode: w.Mode, Until: until(w.TTL), Origin: w.Origin}
	if o.check() != nil {
		return // unknown, or ended on the way
	}
	m.overrides.remember(o)
	if o.Origin == m.reg.id {
		return
	}
	callAll(cbs, o, m.logger())
}
