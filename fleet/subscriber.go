package fleet

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// receivePoll is how long one wait for a message lasts; between waits the
// subscriber serves callbacks registered meanwhile and notices a
// reconnect. It bounds how late a new callback gets its replay.
const receivePoll = 200 * time.Millisecond

// subscriber is the state of the loop that receives the fleet's messages
// and hands them, and the replays, to the callbacks: one goroutine, so
// each callback gets everything in order.
type subscriber struct {
	mu               sync.Mutex
	pendingBreakers  []*callback[BreakerState] // registered since the last replay
	pendingOverrides []*callback[Override]

	epoch string // the fleet's epoch when last connected; loop only
}

// callbacks is a list of functions registered to receive values of T.
type callbacks[T any] struct {
	mu   sync.Mutex
	list []*callback[T]
}

// callback is one registered function. Its lock is held while it runs,
// so that once its stop function returns it is never called again.
type callback[T any] struct {
	mu      sync.Mutex
	fn      func(T)
	stopped bool
}

func (cs *callbacks[T]) add(fn func(T)) *callback[T] {
	cb := &callback[T]{fn: fn}
	cs.mu.Lock()
	cs.list = append(cs.list, cb)
	cs.mu.Unlock()
	return cb
}

// remove unregisters cb, waiting for a call of it under way to end. It
// must not be called from cb itself.
func (cs *callbacks[T]) remove(cb *callback[T]) {
	cs.mu.Lock()
	for i, c := range cs.list {
		if c == cb {
			cs.list = append(cs.list[:i:i], cs.list[i+1:]...)
			break
		}
	}
	cs.mu.Unlock()
	cb.mu.Lock()
	cb.stopped = true
	cb.mu.Unlock()
}

func (cs *callbacks[T]) all() []*callback[T] {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.list
}

// call runs cb with v, unless it was stopped. A panic in cb is logged,
// not let loose in a background goroutine where it would end Caddy.
func (cb *callback[T]) call(v T, log *zap.Logger) {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	if cb.stopped {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			log.Error("fleet: callback panicked", zap.Any("panic", r))
		}
	}()
	cb.fn(v)
}

// callAll hands v to each of cbs in turn.
func callAll[T any](cbs []*callback[T], v T, log *zap.Logger) {
	for _, cb := range cbs {
		cb.call(v, log)
	}
}

// subscribeLoop keeps the member subscribed while Redis answers: after
// each (re)connect it subscribes, restores what Redis lost, replays the
// keys to the callbacks and then hands them each message.
func (m *Member) subscribeLoop() {
	defer m.wg.Done()
	for {
		if !m.health.connected.Load() {
			select {
			case <-m.ctx.Done():
				return
			case <-m.health.reconnected:
			}
			continue
		}
		select {
		case <-m.health.reconnected: // the subscription made now is the renewal
		default:
		}
		ps, early, err := m.subscribe()
		if err != nil {
			if m.ctx.Err() != nil {
				return
			}
			countError(opSubscribe)
			m.logger().Debug("fleet: subscribing failed", zap.String("error", m.opts.scrub(err)))
			if !m.sleep(heartbeatEvery) {
				return
			}
			continue
		}
		for _, msg := range early {
			m.dispatch(msg)
		}
		m.receive(ps)
		_ = ps.Close()
		if m.ctx.Err() != nil {
			return
		}
	}
}

// subscribe subscribes to the fleet's channels and, once subscribed,
// catches up on the keys. It returns the messages that came in while it
// waited for the subscription to be confirmed.
func (m *Member) subscribe() (*redis.PubSub, []*redis.Message, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
	defer cancel()
	ps := m.rdb.Subscribe(ctx)
	if err := ps.Subscribe(ctx, m.names.breakerChannel, m.names.overrideChannel); err != nil {
		_ = ps.Close()
		return nil, nil, err
	}
	var early []*redis.Message
	for confirmed := 0; confirmed < 2; {
		v, err := ps.ReceiveTimeout(ctx, m.opts.Timeout)
		if err != nil {
			_ = ps.Close()
			return nil, nil, err
		}
		switch v := v.(type) {
		case *redis.Subscription:
			confirmed++
		case *redis.Message:
			early = append(early, v)
		}
	}
	if err := m.catchUp(); err != nil {
		_ = ps.Close()
		return nil, nil, err
	}
	return ps, early, nil
}

// catchUp runs once subscribed: it restores this member's state if Redis
// lost its data, and replays the keys to every callback.
func (m *Member) catchUp() error {
	ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
	lost, err := m.epochChanged(ctx)
	cancel()
	if err != nil {
		return err
	}
	if lost {
		m.logger().Warn("fleet: redis lost its data; restoring this instance's open breakers and known overrides")
		m.breakers.restore(m)
		m.overrides.restore(m)
	}
	// The scripts are gone after a restart: load the request path's one
	// now rather than on a request.
	ctx, cancel = context.WithTimeout(m.ctx, m.opts.Timeout)
	_ = reserveScript.Load(ctx, m.rdb).Err()
	cancel()

	m.subs.mu.Lock()
	m.subs.pendingBreakers, m.subs.pendingOverrides = nil, nil
	m.subs.mu.Unlock()
	return m.replayTo(m.breakers.cbs.all(), m.overrides.cbs.all())
}

// replayTo reads the keys of both indexes and hands them to the given
// callbacks.
func (m *Member) replayTo(bcbs []*callback[BreakerState], ocbs []*callback[Override]) error {
	if len(bcbs) > 0 {
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
		items, err := m.replay(ctx, m.names.breakerIndex)
		cancel()
		if err != nil {
			return err
		}
		for _, it := range items {
			m.receiveBreaker(it.payload, it.pttl, true, bcbs)
		}
	}
	if len(ocbs) > 0 {
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
		items, err := m.replay(ctx, m.names.overrideIndex)
		cancel()
		if err != nil {
			return err
		}
		for _, it := range items {
			m.receiveOverride(it.payload, it.pttl, true, ocbs)
		}
	}
	return nil
}

// receive hands messages to the callbacks until the subscription breaks,
// Redis reconnects (the subscription is then renewed, with a replay), or
// the member closes.
func (m *Member) receive(ps *redis.PubSub) {
	for {
		if err := m.servePending(); err != nil {
			countError(opSubscribe)
			m.logger().Debug("fleet: replay failed", zap.String("error", m.opts.scrub(err)))
			return
		}
		v, err := ps.ReceiveTimeout(m.ctx, receivePoll)
		if m.ctx.Err() != nil {
			return
		}
		if err != nil {
			if isTimeout(err) {
				select {
				case <-m.health.reconnected:
					return
				default:
					continue
				}
			}
			countError(opSubscribe)
			m.logger().Debug("fleet: subscription broke", zap.String("error", m.opts.scrub(err)))
			return
		}
		if msg, ok := v.(*redis.Message); ok {
			m.dispatch(msg)
		}
	}
}

// servePending replays the keys to the callbacks registered since the
// last replay.
func (m *Member) servePending() error {
	m.subs.mu.Lock()
	bcbs, ocbs := m.subs.pendingBreakers, m.subs.pendingOverrides
	m.subs.pendingBreakers, m.subs.pendingOverrides = nil, nil
	m.subs.mu.Unlock()
	if len(bcbs) == 0 && len(ocbs) == 0 {
		return nil
	}
	err := m.replayTo(bcbs, ocbs)
	if err != nil {
		// Put them back: the next (re)subscription replays to all.
		m.subs.mu.Lock()
		m.subs.pendingBreakers = append(m.subs.pendingBreakers, bcbs...)
		m.subs.pendingOverrides = append(m.subs.pendingOverrides, ocbs...)
		m.subs.mu.Unlock()
	}
	return err
}

// dispatch hands a message to every callback of its channel.
func (m *Member) dispatch(msg *redis.Message) {
	switch msg.Channel {
	case m.names.breakerChannel:
		m.receiveBreaker(msg.Payload, 0, false, m.breakers.cbs.all())
	case m.names.overrideChannel:
		m.receiveOverride(msg.Payload, 0, false, m.overrides.cbs.all())
	}
}

// isTimeout reports whether err is a read that timed out, which for a
// subscription only means no message came.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
