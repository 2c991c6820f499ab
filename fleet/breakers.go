package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Breaker states, as BreakerState.State spells them.
const (
	StateClosed   = "closed"
	StateHalfOpen = "half_open"
	StateOpen     = "open"
)

// breakerQueueSize bounds the states waiting to be sent: while Redis is
// down a flapping breaker must not grow memory, and the newest states are
// the ones worth sending.
const breakerQueueSize = 256

// BreakerState is a change of one instance's breaker, for the others to
// follow: when one instance learns that an upstream is down, all of them
// stop sending to it, without each counting the failures again.
type BreakerState struct {
	// Upstream is the dial address, host:port.
	Upstream string
	// Settings is an opaque key of the breaker settings: only breakers
	// with equal Settings follow each other, since a state means
	// something only under the settings that reached it.
	Settings string
	// State is StateOpen, StateHalfOpen or StateClosed.
	State string
	// Until is, for StateOpen, when the breaker turns half-open. It
	// travels as a time left, so the instances' clocks need not agree.
	Until time.Time
	// Period is, for StateOpen, the length of the open period Until
	// ends (it grows while the upstream stays down), and for
	// StateHalfOpen that of the period that just ended: the others wait
	// that long for the probes' outcome before they decide alone. Zero
	// when not known (a member that does not send it).
	Period time.Duration
	// Origin is the ID of the member that published the state;
	// PublishBreaker fills it in.
	Origin string
}

// maxPeriodMillis is the longest period a message can carry: as long as
// a time.Duration holds.
const maxPeriodMillis = int64(1<<63-1) / int64(time.Millisecond)

// breakerWire is how a BreakerState travels and is kept in Redis.
type breakerWire struct {
	Upstream string `json:"upstream"`
	Settings string `json:"settings,omitempty"`
	State    string `json:"state"`
	TTL      int64  `json:"ttl_ms,omitempty"`    // open: ms left until half-open, when sent
	Period   int64  `json:"period_ms,omitempty"` // see BreakerState.Period
	Origin   string `json:"origin"`
}

// breakerSide is a member's share of breaker state: the states waiting to
// be sent, its own open breakers (to restore them if Redis loses its
// data) and the callbacks that follow the others.
type breakerSide struct {
	mu    sync.Mutex
	queue []BreakerState
	own   map[string]BreakerState // by key: this member's open breakers
	wake  chan struct{}
	cbs   callbacks[BreakerState]
}

func (b *breakerSide) init() {
	b.own = make(map[string]BreakerState)
	b.wake = make(chan struct{}, 1)
}

func (s BreakerState) check() error {
	switch {
	case s.Upstream == "":
		return errors.New("fleet: breaker state without an upstream")
	case s.State == StateOpen && s.Until.IsZero():
		return errors.New("fleet: open breaker state without Until")
	case s.State != StateOpen && s.State != StateHalfOpen && s.State != StateClosed:
		return errors.New("fleet: unknown breaker state " + s.State)
	}
	return nil
}

// PublishBreaker tells the fleet that a local breaker changed state. It
// never waits: it is called where the breaker changes, under its lock.
// The state is queued (the oldest is dropped when the queue is full) and
// sent in order by a background goroutine as soon as Redis answers; an
// open state whose Until has passed by then is not sent at all.
func (m *Member) PublishBreaker(s BreakerState) {
	if err := s.check(); err != nil {
		m.logger().Error("fleet: breaker state not published", zap.Error(err))
		return
	}
	s.Origin = m.reg.id
	key := m.names.breaker(s.Upstream, s.Settings)
	b := &m.breakers
	b.mu.Lock()
	if s.State == StateOpen {
		b.own[key] = s
	} else {
		delete(b.own, key)
	}
	if len(b.queue) >= breakerQueueSize {
		b.queue = append(b.queue[:0], b.queue[1:]...)
		countError(opDropped)
	}
	b.queue = append(b.queue, s)
	b.mu.Unlock()
	signal(b.wake)
}

// OnBreaker registers fn to follow the breakers of the other members:
// fn gets the states they publish (never this member's own), in order,
// from a background goroutine, and must not block. On each (re)connect,
// and once soon after registering, fn also gets the breakers open now,
// so that a member that starts or reconnects late learns them. An open
// state's Until is in local time. fn is never called once stop returns;
// stop must not be called from fn.
func (m *Member) OnBreaker(fn func(BreakerState)) (stop func()) {
	cb := m.breakers.cbs.add(fn)
	m.subs.mu.Lock()
	m.subs.pendingBreakers = append(m.subs.pendingBreakers, cb)
	m.subs.mu.Unlock()
	return func() { m.breakers.cbs.remove(cb) }
}

// publishLoop sends the queued breaker states while Redis answers.
func (m *Member) publishLoop() {
	defer m.wg.Done()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-m.breakers.wake:
		}
		for m.health.connected.Load() {
			s, ok := m.breakers.pop()
			if !ok {
				break
			}
			if err := m.writeBreaker(s, false); err != nil {
				if m.ctx.Err() != nil {
					return
				}
				countError(opPublish)
				m.logger().Debug("fleet: breaker state not sent yet", zap.String("upstream", s.Upstream), zap.String("error", m.opts.scrub(err)))
				m.breakers.pushFront(s)
				if !m.sleep(heartbeatEvery) {
					return
				}
			}
		}
	}
}

func (b *breakerSide) pop() (BreakerState, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		return BreakerState{}, false
	}
	s := b.queue[0]
	b.queue = append(b.queue[:0], b.queue[1:]...)
	return s, true
}

// pushFront puts back a state that could not be sent, unless newer ones
// filled the queue meanwhile.
func (b *breakerSide) pushFront(s BreakerState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) >= breakerQueueSize {
		countError(opDropped)
		return
	}
	b.queue = append([]BreakerState{s}, b.queue...)
}

// writeBreaker keeps s in its key (an open state until it half-opens;
// the others delete the key) and publishes it. An open state that has
// ended already is dropped.
func (m *Member) writeBreaker(s BreakerState, onlyIfAbsent bool) error {
	ttl := time.Duration(-1)
	w := breakerWire{Upstream: s.Upstream, Settings: s.Settings, State: s.State, Origin: s.Origin, Period: s.Period.Milliseconds()}
	if s.State == StateOpen {
		ttl = time.Until(s.Until)
		if ttl <= 0 {
			return nil
		}
		w.TTL = ttlMillis(s.Until)
	}
	payload, err := json.Marshal(w)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
	defer cancel()
	return m.write(ctx, m.names.breaker(s.Upstream, s.Settings), m.names.breakerIndex, m.names.breakerChannel, string(payload), ttl, onlyIfAbsent)
}

// restore writes back this member's open breakers that Redis lost,
// without overwriting what others wrote since.
func (b *breakerSide) restore(m *Member) {
	b.mu.Lock()
	var open []BreakerState
	for key, s := range b.own {
		if time.Now().Before(s.Until) {
			open = append(open, s)
		} else {
			delete(b.own, key)
		}
	}
	b.mu.Unlock()
	for _, s := range open {
		if err := m.writeBreaker(s, true); err != nil {
			countError(opPublish)
			return
		}
	}
}

// receiveBreaker decodes a breaker state (a message, or a key replayed
// with its TTL) and hands it to cbs, unless this member published it or
// it is an open state that has ended.
func (m *Member) receiveBreaker(payload string, pttl int64, replayed bool, cbs []*callback[BreakerState]) {
	var w breakerWire
	if err := json.Unmarshal([]byte(payload), &w); err != nil {
		m.logger().Debug("fleet: bad breaker message", zap.Error(err))
		return
	}
	if w.Origin == m.reg.id {
		return
	}
	s := BreakerState{Upstream: w.Upstream, Settings: w.Settings, State: w.State, Origin: w.Origin,
		Period: time.Duration(min(max(w.Period, 0), maxPeriodMillis)) * time.Millisecond}
	if replayed {
		w.TTL = pttl
	}
	if s.State == StateOpen {
		if w.TTL <= 0 {
			return
		}
		s.Until = until(w.TTL)
	}
	if s.check() != nil {
		return
	}
	callAll(cbs, s, m.logger())
}
