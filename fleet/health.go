package fleet

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

const (
	// heartbeatEvery is how often a member checks Redis and says it is
	// alive; it is also the longest a member stays alone once Redis
	// answers again.
	heartbeatEvery = time.Second
	// heartbeatTTL is how long a member counts as alive after its last
	// heartbeat: a few missed beats, not one late one.
	heartbeatTTL = 3 * time.Second
)

// heartbeatScript records this member's heartbeat, forgets the members
// not heard from within the TTL, and counts the rest, all by the Redis
// clock so that the instances' clocks do not matter. It is the health
// check too: a member that can run it is connected.
//
// KEYS[1]: the members set; ARGV[1]: instance id; ARGV[2]: TTL in ms.
var heartbeatScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
`)

// health is what a member knows of its connection to Redis.
type health struct {
	connected atomic.Bool  // read on every request: no lock
	live      atomic.Int64 // members alive at the last heartbeat

	mu    sync.Mutex // orders the transitions, so each is logged once
	known bool       // a first check has ended, either way

	// reconnected tells the subscriber to subscribe and replay anew.
	reconnected chan struct{}
}

func (h *health) init() {
	h.live.Store(1)
	h.reconnected = make(chan struct{}, 1)
}

// Connected reports whether Redis answered the last check in time. While
// it is false, the operations that need Redis fail at once and the
// instance acts alone.
func (m *Member) Connected() bool { return m.health.connected.Load() }

// Live returns how many members of this fleet (same URL and prefix) were
// alive at the last heartbeat, this one included, and at least 1. The
// transport divides a fleet-wide rate by it when it must act alone.
func (m *Member) Live() int { return int(m.health.live.Load()) }

// healthLoop checks Redis every heartbeatEvery, from the start (so that
// Join need not wait for it) until the member closes.
func (m *Member) healthLoop() {
	defer m.wg.Done()
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		m.check()
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check runs the heartbeat, bounded by the timeout, and records the
// outcome.
func (m *Member) check() {
	ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
	n, err := heartbeatScript.Run(ctx, m.rdb, []string{m.names.members}, m.reg.id, heartbeatTTL.Milliseconds()).Int64()
	cancel()
	if m.ctx.Err() != nil {
		return // closing
	}
	if err != nil {
		countError(opPing)
		m.setConnected(false, err)
		return
	}
	m.health.live.Store(max(n, 1))
	m.setConnected(true, nil)
}

// markDown records that an operation found Redis not answering, so that
// the requests after it act alone at once instead of each waiting out
// the timeout; the next heartbeat brings the member back. Failures that
// are the caller's own doing (a canceled request) say nothing of Redis.
func (m *Member) markDown(caller context.Context, err error) {
	if caller.Err() != nil || !m.health.connected.Load() {
		return
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return // Redis answered, with an error: it is up
	}
	m.setConnected(false, err)
}

// setConnected records the state of the connection, logging and
// counting each change once. Going up signals the subscriber (which
// subscribes and replays anew) and the breaker publisher.
func (m *Member) setConnected(up bool, err error) {
	h := &m.health
	h.mu.Lock()
	defer h.mu.Unlock()
	first := !h.known
	h.known = true
	if h.connected.Load() == up && !first {
		return
	}
	h.connected.Store(up)
	log := m.logger()
	if up {
		connectedGauge.WithLabelValues(m.show, m.opts.Prefix).Set(1)
		if first {
			log.Info("fleet: joined", zap.String("instance", m.reg.id), zap.Int64("members", h.live.Load()))
		} else {
			transitionsTotal.WithLabelValues(m.show, m.opts.Prefix, "connected").Inc()
			log.Warn("fleet: redis answers again; sharing state with the fleet", zap.Int64("members", h.live.Load()))
		}
		signal(h.reconnected)
		signal(m.breakers.wake)
		return
	}
	connectedGauge.WithLabelValues(m.show, m.opts.Prefix).Set(0)
	transitionsTotal.WithLabelValues(m.show, m.opts.Prefix, "disconnected").Inc()
	log.Warn("fleet: redis does not answer; acting alone until it does",
		zap.Duration("timeout", m.opts.Timeout), zap.String("error", m.opts.scrub(err)))
}
