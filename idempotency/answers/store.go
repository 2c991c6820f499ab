// Package answers keeps encoded answers in memory for the features that
// give an answer again without asking the upstream: the idempotency
// records (a repeat gets the first request's answer) and the fallback (a
// read gets the last good answer when the upstream fails).
//
// A Store maps a hashed key to one value (bytes its user encoded) with
// an expiry of its own. It is bounded in bytes: when a value would pass
// the bound, the oldest values go first, by when they were put. Values
// live outside Go's heap where the system allows (see ring), so that a
// full store costs about its bound in resident memory; what a value
// costs is counted exactly (Cost), process-wide per user (Usage).
package answers

import (
	"container/heap"
	"sync"
	"time"
)

// Key names a value. Users hash what they key on (a request's target,
// scope values, a client's key) into it, so that none is kept in clear.
type Key [32]byte

// DefaultMaxBytes is a Store's bound when its Config gives none and no
// Limit is held.
const DefaultMaxBytes = 64 << 20

// Overhead is what a value costs beyond its bytes: its entry on Go's heap
// (key, position, times and links, and its share of the map and the
// expiry heap: some 200 bytes), and as much again of the room the
// garbage collector leaves a heap to grow, rounded up.
const Overhead = 512

// Cost returns what a value of n bytes counts toward a Store's bound.
func Cost(n int) int64 { return int64(n) + Overhead }

// defaultSweepEvery is how often a Store drops the values that expired
// and that no Get looked at since: what bounds the memory of values
// that are never asked for again.
const defaultSweepEvery = 30 * time.Second

// Config says how a Store keeps its values.
type Config struct {
	// MaxBytes bounds the Cost of all values while no Limit is held.
	// Default: DefaultMaxBytes.
	MaxBytes int64
	// Usage counts the store's values with the other stores of its
	// user; nil: a Usage of the store's own.
	Usage *Usage
	// Clock tells the time of expiries and of when values were put, for
	// tests; time.Now when nil.
	Clock func() time.Time
	// SweepEvery is how often the store drops the values that expired
	// by itself, while it holds any. Default: 30s. Negative: only when
	// Sweep is called (a test that follows every change).
	SweepEvery time.Duration
}

// Store keeps values under one lock, bounded in bytes. It is safe for
// concurrent use.
//
// Values are written one after the other into a ring; the room of a
// value that goes out of turn (replaced, deleted, expired) is reclaimed
// when the ring's head reaches it. When the ring has no room for a new
// value although the bound has (such holes), the values at the head are
// moved to the tail, keeping their age, until it does: so values are
// dropped for room only when the bound would be passed, and then the
// oldest first.
type Store struct {
	now        func() time.Time
	usage      *Usage
	sweepEvery time.Duration // <0: never by itself

	mu      sync.Mutex
	base    int64         // the bound while no Limit is held
	limits  map[int64]int // the bounds held, and how many times each
	bound   int64
	entries map[Key]*entry
	age     list // oldest first
	place   list // as they lie in the ring, from its head
	exp     expiryHeap
	bytes   int64 // the Cost of all entries
	ring    *ring // made with the first value
	sweep   *time.Timer
	armed   bool // the sweep will fire
	closed  bool
}

// New returns an empty Store, c's zero fields taking their defaults.
func New(c Config) *Store {
	s := &Store{now: c.Clock, usage: c.Usage, sweepEvery: c.SweepEvery, base: c.MaxBytes, entries: make(map[Key]*entry)}
	if s.sweepEvery == 0 {
		s.sweepEvery = defaultSweepEvery
	}
	if s.base <= 0 {
		s.base = DefaultMaxBytes
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.usage == nil {
		s.usage = new(Usage)
	}
	s.age.of, s.place.of = byAge, byPlace
	s.bound = s.base
	return s
}

// Put keeps head followed by body (two parts, so that a caller need not
// join them) under k until expires, in place of k's earlier value. To
// make room it drops the oldest values first, as many as the bound
// needs; a value that costs more than the bound on its own is kept
// alone. It reports false, keeping nothing (k's earlier value is gone
// all the same), when the value can never fit (see MaxLen), when
// expires is not after now, or after Close.
func (s *Store) Put(k Key, head, body []byte, expires time.Time) bool {
	n := len(head) + len(body)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if old := s.entries[k]; old != nil {
		s.remove(old)
	}
	now := s.now()
	if !now.Before(expires) || n > s.maxLen() {
		return false
	}
	if s.ring == nil {
		s.ring = newRing(ringSize(s.bound))
	}
	c, bound := Cost(n), s.ringBound()
	for s.bytes+c > bound && s.age.head != nil {
		s.remove(s.age.head)
	}
	for !s.ring.fits(n) && s.place.head != nil {
		s.moveToTail(s.place.head)
	}
	e := &entry{key: k, pos: s.ring.tail, n: n, kept: now.UnixNano(), expires: expires.UnixNano()}
	s.ring.write(e.pos, head)
	s.ring.write(e.pos+uint64(len(head)), body)
	s.ring.tail += uint64(n)
	s.entries[k] = e
	s.age.push(e)
	s.place.push(e)
	heap.Push(&s.exp, e)
	s.bytes += c
	s.usage.add(1, c)
	s.armSweep()
	return true
}

// ringBound is the bound as the ring allows it: the bound, or less when
// the ring is on the heap and smaller than asked. Within it, the values
// always fit in the ring once its holes are reclaimed: each costs more
// than its bytes, and the ring is a chunk longer than the bound.
func (s *Store) ringBound() int64 {
	return min(s.bound, int64(len(s.ring.buf)-chunk))
}

// maxLen is the longest value the store takes, under its lock.
func (s *Store) maxLen() int {
	if s.ring != nil {
		return len(s.ring.buf)
	}
	return ringSize(s.bound)
}

// MaxLen returns the longest value Put takes: the bound rounded up to
// whole chunks of the ring, and one chunk more (less where memory cannot
// be mapped and the ring is on Go's heap, at most 256MiB).
func (s *Store) MaxLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxLen()
}

// moveToTail moves e, the value at the ring's head, to its tail, so that
// the room of the values gone after it is reclaimed. Put calls it only
// while the bound has room for the new value but the ring has not: then
// the ring holds such room, and each value moved once is enough to
// reclaim all of it. e keeps its age.
func (s *Store) moveToTail(e *entry) {
	r := s.ring
	s.place.remove(e)
	if r.fits(e.n) {
		// the copy is in use before the original is not: the head
		// moves, giving memory back, only once the tail took it in
		to := r.tail
		r.move(to, e.pos, e.n)
		r.tail += uint64(e.n)
		e.pos = to
		s.place.push(e)
		s.advance()
		return
	}
	// no room for a copy beside it: through the heap, once
	b := make([]byte, e.n)
	r.read(e.pos, b)
	s.advance()
	e.pos = r.tail
	r.write(e.pos, b)
	r.tail += uint64(e.n)
	s.place.push(e)
}

// advance moves the ring's head to the first value left in place order,
// or to the tail when none is.
func (s *Store) advance() {
	if h := s.place.head; h != nil {
		s.ring.advance(h.pos)
	} else {
		s.ring.advance(s.ring.tail)
	}
}

// remove takes e out of the store.
func (s *Store) remove(e *entry) {
	delete(s.entries, e.key)
	s.age.remove(e)
	heap.Remove(&s.exp, e.heapAt)
	c := Cost(e.n)
	s.bytes -= c
	s.usage.add(-1, -c)
	switch {
	case s.place.head == e:
		s.place.remove(e)
		s.advance()
	case s.place.tail == e:
		// the newest in the ring: the room up to the one before it is
		// the tail's again
		s.place.remove(e)
		t := s.place.tail
		s.ring.tail = t.pos + uint64(t.n)
	default:
		s.place.remove(e)
	}
}

// Get returns a copy of k's value and when it was put; ok is false when
// k has none, or its value expired (which then goes).
func (s *Store) Get(k Key) (value []byte, kept time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[k]
	if e == nil {
		return nil, time.Time{}, false
	}
	if s.now().UnixNano() >= e.expires {
		s.remove(e)
		return nil, time.Time{}, false
	}
	value = make([]byte, e.n)
	s.ring.read(e.pos, value)
	return value, time.Unix(0, e.kept), true
}

// Delete drops k's value, if any.
func (s *Store) Delete(k Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[k]; e != nil {
		s.remove(e)
	}
}

// Limit holds maxBytes as a bound of the store until release is called
// (more than once does nothing). While any is held, the store's bound is
// the largest held, in place of Config.MaxBytes: so users of one store
// who each ask for a bound (the transports of a config, say) get the
// room of the largest, and a new config's bound applies as soon as the
// old config lets go of its own. A bound that comes down drops the
// oldest values until the store is within it.
func (s *Store) Limit(maxBytes int64) (release func()) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	s.mu.Lock()
	if s.limits == nil {
		s.limits = make(map[int64]int)
	}
	s.limits[maxBytes]++
	s.rebound()
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.limits[maxBytes]--; s.limits[maxBytes] == 0 {
				delete(s.limits, maxBytes)
			}
			s.rebound()
		})
	}
}

// rebound applies the bound the limits held make: the oldest values go
// until the store is within it, and the ring is made anew when its size
// no longer fits the bound.
func (s *Store) rebound() {
	bound := s.base
	if len(s.limits) > 0 {
		bound = 0
		for b := range s.limits {
			bound = max(bound, b)
		}
	}
	if bound == s.bound || s.closed {
		return
	}
	s.bound = bound
	for s.bytes > s.bound && s.age.head != nil {
		s.remove(s.age.head)
	}
	if s.ring != nil && len(s.ring.buf) != ringSize(bound) {
		s.resize(ringSize(bound))
	}
}

// resize copies the values into a new ring of size bytes, in place
// order, and lets the old one go. The values fit: the store is within
// its bound, and size is the ring size of that bound.
func (s *Store) resize(size int) {
	old, r := s.ring, newRing(size)
	for e := s.place.head; e != nil; e = e.place.next {
		if e.n > len(r.buf) || !r.fits(e.n) {
			// a ring on the heap, smaller than asked: the rest goes
			for e != nil {
				next := e.place.next
				s.removeGone(e)
				e = next
			}
			break
		}
		b := make([]byte, e.n)
		old.read(e.pos, b)
		e.pos = r.tail
		r.write(e.pos, b)
		r.tail += uint64(e.n)
	}
	old.release()
	s.ring = r
}

// removeGone takes e out of the store when its bytes are no longer in
// the ring (see resize).
func (s *Store) removeGone(e *entry) {
	delete(s.entries, e.key)
	s.age.remove(e)
	s.place.remove(e)
	heap.Remove(&s.exp, e.heapAt)
	c := Cost(e.n)
	s.bytes -= c
	s.usage.add(-1, -c)
}

// Sweep drops the values that expired. The store sweeps by itself
// (Config.SweepEvery) while it holds any value.
func (s *Store) Sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked()
}

func (s *Store) sweepLocked() {
	now := s.now().UnixNano()
	for len(s.exp) > 0 && s.exp[0].expires <= now {
		s.remove(s.exp[0])
	}
}

// armSweep makes sure a sweep will come, under the lock.
func (s *Store) armSweep() {
	if s.armed || s.sweepEvery < 0 {
		return
	}
	s.armed = true
	if s.sweep == nil {
		s.sweep = time.AfterFunc(s.sweepEvery, s.sweepTimer)
	} else {
		s.sweep.Reset(s.sweepEvery)
	}
}

// sweepTimer sweeps, and sweeps again later while any value is left.
func (s *Store) sweepTimer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.sweepLocked()
	if s.armed = len(s.entries) > 0; s.armed {
		s.sweep.Reset(s.sweepEvery)
	}
}

// Len returns how many values s holds and their Cost.
func (s *Store) Len() (values int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries), s.bytes
}

// Close drops every value and gives the ring's memory back; its Usage no
// longer counts them. Put keeps nothing after it, and Get finds nothing.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if s.sweep != nil {
		s.sweep.Stop()
	}
	s.usage.add(-int64(len(s.entries)), -s.bytes)
	s.entries, s.exp, s.bytes = nil, nil, 0
	s.age.head, s.age.tail, s.place.head, s.place.tail = nil, nil, nil, nil
	if s.ring != nil {
		s.ring.release()
		s.ring = nil
	}
}
