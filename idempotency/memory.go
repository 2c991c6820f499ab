package idempotency

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-resilient/resilient/idempotency/answers"
)

// Defaults for the fields of Config left zero.
const (
	DefaultTTL       = 24 * time.Hour
	DefaultMaxMemory = answers.DefaultMaxBytes
)

// Config says how a Memory keeps its records.
type Config struct {
	// TTL is how long a completed record is kept when Begin's Params
	// give none. Default: 24h.
	TTL time.Duration
	// MaxMemory bounds the bytes of all kept answers (Answer.Size)
	// while no Limit is held. Default: 64MiB.
	MaxMemory int64
	// Clock tells the time of TTLs, for tests; time.Now when nil. How
	// long a repeat waits is measured on the real clock.
	Clock func() time.Time
	// SweepEvery is how often the completed records that expired are
	// dropped though no Begin looked at them. Default: 30s. Negative:
	// only when Sweep is called.
	SweepEvery time.Duration
}

// Memory is the in-process store. Its in-flight records (claims, and the
// repeats waiting on them) are a map under one lock; its completed
// records, fingerprint and answer encoded as in Redis (wire.go), are the
// values of a kept-answer store (idempotency/answers), outside Go's heap.
//
// It is meant to be one per process, shared by every transport that
// keeps records, so that records outlive any change of settings: each
// Begin gives its own TTL (Params), and the bound is the largest
// MaxMemory among the users that hold one (Limit), the oldest completed
// records going first when a new one would pass it, or when it comes
// down. Records of two transports do not mix: a key is hashed with its
// scope's values and a record holds its request's fingerprint (method,
// target, body), so only the same request with the same key and scope
// is ever answered from another's record.
//
// In-flight records are never dropped, for memory or time: they cost a
// constant each, and there are no more of them than requests under way.
// Nothing runs per key: a repeat that waits blocks on a channel of the
// record, made only when someone waits.
type Memory struct {
	ttl  time.Duration
	now  func() time.Time
	kept *answers.Store

	mu     sync.Mutex
	flying map[Key]*flight
	closed bool
}

// usage counts the completed records of every Memory, and inFlight
// their in-flight records, for Stats.
var (
	usage    answers.Usage
	inFlight atomic.Int64
)

// NewMemory returns an empty Memory, c's zero fields taking their
// defaults.
func NewMemory(c Config) *Memory {
	m := &Memory{ttl: c.TTL, now: c.Clock, flying: make(map[Key]*flight)}
	if m.ttl <= 0 {
		m.ttl = DefaultTTL
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.kept = answers.New(answers.Config{MaxBytes: c.MaxMemory, Usage: &usage, Clock: m.now, SweepEvery: c.SweepEvery})
	return m
}

// Begin implements Store.
func (m *Memory) Begin(ctx context.Context, k Key, p Params, fp func() (Fingerprint, error)) (Result, error) {
	var deadline time.Time // when the wait runs out, once it started
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			if timer != nil {
				// The first may still be under way, in a config that is
				// stopping: sending a second would break the promise.
				return Result{Verdict: InFlight}, nil
			}
			return Result{Verdict: New, Claim: noClaim{}}, nil
		}
		f := m.flying[k]
		if f == nil {
			enc, _, ok := m.kept.Get(answers.Key(k))
			if ok {
				m.mu.Unlock()
				return m.judge(enc, fp)
			}
			f = &flight{key: k}
			m.flying[k] = f
			inFlight.Add(1)
			m.mu.Unlock()
			return Result{Verdict: New, Claim: &memClaim{m: m, f: f, ttl: p.TTL}}, nil
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(p.Wait)
		}
		left := time.Until(deadline)
		if left <= 0 {
			m.mu.Unlock()
			return Result{Verdict: InFlight}, nil
		}
		if f.wake == nil {
			f.wake = make(chan struct{})
		}
		f.waiters++
		wake := f.wake
		m.mu.Unlock()

		if timer == nil && p.Waiting != nil {
			p.Waiting()
		}
		if timer == nil {
			timer = time.NewTimer(left)
		} else {
			timer.Reset(left)
		}
		select {
		case <-wake:
		case <-timer.C:
			m.leave(f, wake)
		case <-ctx.Done():
			m.leave(f, wake)
			return Result{}, ctx.Err()
		}
	}
}

// judge says what a repeat gets from the completed record enc.
func (m *Memory) judge(enc []byte, fp func() (Fingerprint, error)) (Result, error) {
	w, err := decodeRecord(enc)
	if err != nil {
		// keep writes only what decodes (keepable): this cannot happen,
		// and what cannot be read is never taken for free
		return Result{Verdict: Used}, nil
	}
	return judge(w.fp, w.answer, fp)
}

// leave undoes a waiter's count on f when it stops waiting before f
// ended, so that a record nobody waits for any more holds no channel.
func (m *Memory) leave(f *flight, wake chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f.wake != wake {
		return // f ended meanwhile
	}
	if f.waiters--; f.waiters == 0 {
		f.wake = nil
	}
}

// land ends f, which is in flight: its key is no longer, and its waiters
// look again.
func (m *Memory) land(f *flight) {
	delete(m.flying, f.key)
	inFlight.Add(-1)
	f.end()
}

// keep completes f, if it is still in flight, with fp and a copy of a,
// kept for ttl: whole when the store takes it; else its status and
// header; else its status alone, which always fits (a few dozen bytes
// in a store of at least a chunk). Either way the key stays used.
func (m *Memory) keep(f *flight, fp Fingerprint, a Answer, ttl time.Duration) {
	if ttl <= 0 {
		ttl = m.ttl
	}
	a = keepable(a)
	head := encodeHead(fp, &a)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.flying[f.key] != f {
		return
	}
	defer m.land(f)
	k, expires := answers.Key(f.key), m.now().Add(ttl)
	if m.kept.Put(k, head, a.Body, expires) {
		return
	}
	// too large to keep whole: what says the key was used
	if a.Whole {
		a.Whole, a.Body = false, nil
		if m.kept.Put(k, encodeHead(fp, &a), nil, expires) {
			return
		}
	}
	a.Header = nil
	m.kept.Put(k, encodeHead(fp, &a), nil, expires)
}

// release deletes f, if it is still in flight.
func (m *Memory) release(f *flight) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed && m.flying[f.key] == f {
		m.land(f)
	}
}

// Limit holds maxMemory as the bound of the kept answers until release
// is called; while any is held, the largest held applies in place of
// Config.MaxMemory, and a bound that comes down drops the oldest
// completed records until the store is within it. Each transport that
// keeps records in m holds its max_memory from provision to cleanup.
func (m *Memory) Limit(maxMemory int64) (release func()) {
	return m.kept.Limit(maxMemory)
}

// Sweep drops the completed records that expired. m sweeps by itself
// (Config.SweepEvery) while it holds any; in-flight records never
// expire.
func (m *Memory) Sweep() { m.kept.Sweep() }

// Close drops every record, so that the gauges no longer count them;
// repeats waiting are woken, and get InFlight. A Begin after Close gets
// New with a Claim that keeps nothing.
func (m *Memory) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.closed = true
	for _, f := range m.flying {
		f.end()
	}
	inFlight.Add(-int64(len(m.flying)))
	m.flying = nil
	m.kept.Close()
}

// Len returns how many records m holds, in flight and completed, and the
// bytes of its kept answers.
func (m *Memory) Len() (records int, bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, b := m.kept.Len()
	return len(m.flying) + n, b
}

// memClaim is a Claim on a Memory's in-flight record.
type memClaim struct {
	m     *Memory
	f     *flight
	ttl   time.Duration
	ended atomic.Bool
}

func (c *memClaim) Keep(fp Fingerprint, a Answer) {
	if !c.ended.Swap(true) {
		c.m.keep(c.f, fp, a, c.ttl)
	}
}

func (c *memClaim) Release() {
	if !c.ended.Swap(true) {
		c.m.release(c.f)
	}
}

var _ Store = (*Memory)(nil)
