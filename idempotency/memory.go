package idempotency

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the fields of Config left zero.
const (
	DefaultTTL       = 24 * time.Hour
	DefaultMaxMemory = 64 << 20
)

// sweepEvery is how often a Memory drops the records that expired, or
// whose lease ran out, and that no Begin looked at since: what bounds
// the memory of keys that are never repeated.
const sweepEvery = 30 * time.Second

// Config says how a Memory keeps its records.
type Config struct {
	// TTL is how long a completed record is kept. Default: 24h.
	TTL time.Duration
	// MaxMemory bounds the bytes of all kept answers (Answer.Size).
	// Default: 64MiB.
	MaxMemory int64
	// Clock tells the time of TTLs and leases, for tests; time.Now when
	// nil. How long a repeat waits is measured on the real clock.
	Clock func() time.Time
}

// Memory is the in-process store: a map of records under one lock. It is
// bounded: completed records expire after the TTL, and past MaxMemory
// the oldest completed go first. In-flight records are never dropped
// for memory (they cost a constant each, and there are no more of them
// than requests under way); their lease bounds them.
//
// Nothing runs per key: a repeat that waits blocks on a channel of the
// record, made only when someone waits; one timer per store sweeps.
type Memory struct {
	ttl time.Duration
	max int64
	now func() time.Time

	mu     sync.Mutex
	recs   map[Key]*record
	flying recordList // in flight, in no order that matters
	done   recordList // completed, oldest first: by completion, and so by expiry
	bytes  int64
	ring   *ring // the kept answers; made with the first one
	sweep  *time.Timer
	armed  bool // sweep will fire
	closed bool
}

// NewMemory returns an empty Memory, c's zero fields taking their
// defaults.
func NewMemory(c Config) *Memory {
	m := &Memory{ttl: c.TTL, max: c.MaxMemory, now: c.Clock, recs: make(map[Key]*record)}
	if m.ttl <= 0 {
		m.ttl = DefaultTTL
	}
	if m.max <= 0 {
		m.max = DefaultMaxMemory
	}
	if m.now == nil {
		m.now = time.Now
	}
	return m
}

// Begin implements Store.
func (m *Memory) Begin(ctx context.Context, k Key, lease, wait time.Duration, fp func() (Fingerprint, error)) (Result, error) {
	if lease <= 0 {
		lease = DefaultLease
	}
	deadline := time.Now().Add(wait)
	var timer *time.Timer
	waited := false
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			if waited {
				// The first may still be under way, in a config that is
				// stopping: sending a second would break the promise.
				return Result{Verdict: InFlight}, nil
			}
			return Result{Verdict: New, Claim: noClaim{}}, nil
		}
		now := m.now()
		r := m.lookup(k, now)
		if r == nil {
			r = m.claim(k, now.Add(lease))
			m.mu.Unlock()
			return Result{Verdict: New, Claim: &memClaim{m: m, r: r}}, nil
		}
		if r.done {
			stored, enc := r.fp, m.ring.at(r.pos, r.n)
			m.mu.Unlock()
			w, err := decodeRecord(enc)
			if err != nil {
				// written by keep itself: it cannot happen, and must not be replayed
				return Result{Verdict: Used, Answer: &Answer{Status: http.StatusBadGateway}}, nil
			}
			return judge(stored, w.answer, fp)
		}
		left := time.Until(deadline)
		if left <= 0 {
			m.mu.Unlock()
			return Result{Verdict: InFlight}, nil
		}
		if r.wake == nil {
			r.wake = make(chan struct{})
		}
		r.waiters++
		wake := r.wake
		// Wake up at the lease's end too: the first may never end its
		// claim, and then a waiter takes it over.
		left = min(left, r.leaseEnd.Sub(now))
		m.mu.Unlock()

		waited = true
		if timer == nil {
			timer = time.NewTimer(left)
		} else {
			timer.Reset(left)
		}
		select {
		case <-wake:
		case <-timer.C:
			m.leave(r, wake)
		case <-ctx.Done():
			m.leave(r, wake)
			return Result{}, ctx.Err()
		}
	}
}

// lookup returns k's record, dropping it first if it expired or its
// lease ran out: either way the key is free.
func (m *Memory) lookup(k Key, now time.Time) *record {
	r := m.recs[k]
	if r == nil {
		return nil
	}
	if r.done && !now.Before(r.expires) || !r.done && !now.Before(r.leaseEnd) {
		m.drop(r)
		return nil
	}
	return r
}

// claim adds an in-flight record for k.
func (m *Memory) claim(k Key, leaseEnd time.Time) *record {
	r := &record{key: k, leaseEnd: leaseEnd}
	m.recs[k] = r
	m.flying.push(r)
	totals.records.Add(1)
	if !m.armed {
		m.armed = true
		if m.sweep == nil {
			m.sweep = time.AfterFunc(sweepEvery, m.sweepNow)
		} else {
			m.sweep.Reset(sweepEvery)
		}
	}
	return r
}

// leave undoes a waiter's count on r when it stops waiting before r
// ended, so that a record nobody waits for any more holds no channel.
func (m *Memory) leave(r *record, wake chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.wake != wake {
		return // r ended meanwhile
	}
	if r.waiters--; r.waiters == 0 {
		r.wake = nil
	}
}

// drop removes r from the store, waking its waiters if it was in flight.
func (m *Memory) drop(r *record) {
	delete(m.recs, r.key)
	totals.records.Add(-1)
	if r.done {
		wasHead := m.done.head == r
		m.done.remove(r)
		m.bytes -= r.size
		totals.bytes.Add(-r.size)
		if wasHead {
			// the ring's room is freed oldest first, as answers go
			if h := m.done.head; h != nil {
				m.ring.advance(h.pos)
			} else {
				m.ring.advance(m.ring.tail)
			}
		}
		return
	}
	m.flying.remove(r)
	r.end()
}

// keep completes r, if it is still the claim's, with a copy of a,
// encoded into the ring.
func (m *Memory) keep(r *record, fp Fingerprint, a Answer) {
	if !a.Whole {
		a.Body = nil
	}
	enc := encodeRecord(fp, &a)
	if int64(len(enc))+answerOverhead > m.max {
		// Kept whole it would push out every other answer: keep what
		// says the key was used.
		a.Body, a.Whole = nil, false
		if enc = encodeRecord(fp, &a); int64(len(enc))+answerOverhead > m.max {
			a.Header = nil
			enc = encodeRecord(fp, &a)
		}
	}
	size := int64(len(enc)) + answerOverhead
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || r.done || m.recs[r.key] != r {
		return // its lease ran out and another request claimed the key
	}
	if m.ring == nil {
		m.ring = newRing(int(min(m.max, maxRing)))
	}
	for (m.bytes+size > m.max || !m.ring.fits(len(enc))) && m.done.head != nil {
		m.drop(m.done.head)
	}
	if !m.ring.fits(len(enc)) {
		m.drop(r) // larger than all the room there is: as if never kept
		return
	}
	m.flying.remove(r)
	r.done, r.fp, r.size = true, fp, size
	r.pos, r.n = m.ring.put(enc), len(enc)
	r.expires = m.now().Add(m.ttl)
	m.done.push(r)
	m.bytes += size
	totals.bytes.Add(size)
	r.end()
}

// maxRing bounds the memory one store maps for its answers.
const maxRing = 64 << 30

// release deletes r, if it is still the claim's.
func (m *Memory) release(r *record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed && !r.done && m.recs[r.key] == r {
		m.drop(r)
	}
}

// sweepNow drops the records that expired or whose lease ran out, and
// sweeps again later while any record is left.
func (m *Memory) sweepNow() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	now := m.now()
	for r := m.done.head; r != nil && !now.Before(r.expires); r = m.done.head {
		m.drop(r)
	}
	for r := m.flying.head; r != nil; {
		next := r.next
		if !now.Before(r.leaseEnd) {
			m.drop(r)
		}
		r = next
	}
	if m.armed = len(m.recs) > 0; m.armed {
		m.sweep.Reset(sweepEvery)
	}
}

// Close stops the sweep timer and drops every record, so that the gauges
// no longer count them; repeats waiting are woken. A Begin after Close
// gets New with a Claim that keeps nothing.
func (m *Memory) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.closed = true
	if m.sweep != nil {
		m.sweep.Stop()
	}
	for _, r := range m.recs {
		r.end()
	}
	totals.records.Add(-int64(len(m.recs)))
	totals.bytes.Add(-m.bytes)
	m.recs, m.flying, m.done, m.bytes = nil, recordList{}, recordList{}, 0
	if m.ring != nil {
		m.ring.release()
		m.ring = nil
	}
}

// Len returns how many records m holds, in flight and completed, and the
// bytes of its kept answers.
func (m *Memory) Len() (records int, bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs), m.bytes
}

// memClaim is a Claim on a Memory's record.
type memClaim struct {
	m     *Memory
	r     *record
	ended atomic.Bool
}

func (c *memClaim) Keep(fp Fingerprint, a Answer) {
	if !c.ended.Swap(true) {
		c.m.keep(c.r, fp, a)
	}
}

func (c *memClaim) Release() {
	if !c.ended.Swap(true) {
		c.m.release(c.r)
	}
}

var _ Store = (*Memory)(nil)
