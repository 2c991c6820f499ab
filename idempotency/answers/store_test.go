package answers

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
	"time"
)

// clock is a Config.Clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func key(i int) Key {
	var k Key
	binary.LittleEndian.PutUint64(k[:], uint64(i))
	return k
}

func newStore(t *testing.T, c Config) *Store {
	s := New(c)
	t.Cleanup(s.Close)
	return s
}

// put keeps value as head and body split in two, for an hour.
func put(t *testing.T, s *Store, k Key, value []byte, now time.Time) {
	t.Helper()
	h := len(value) / 3
	if !s.Put(k, value[:h], value[h:], now.Add(time.Hour)) {
		t.Fatalf("Put of %d bytes refused", len(value))
	}
}

// expect fails t unless k holds want (nil: nothing).
func expect(t *testing.T, s *Store, k Key, want []byte) {
	t.Helper()
	got, _, ok := s.Get(k)
	switch {
	case want == nil && ok:
		t.Fatalf("key %x holds %d bytes, want none", k[:4], len(got))
	case want != nil && !ok:
		t.Fatalf("key %x holds nothing, want %d bytes", k[:4], len(want))
	case want != nil && !bytes.Equal(got, want):
		t.Fatalf("key %x holds %d other bytes, want %d", k[:4], len(got), len(want))
	}
}

// A value comes back as it was put, with when it was put; a put under
// the same key replaces it; Delete drops it.
func TestStorePutGetReplace(t *testing.T) {
	c := newClock()
	s := newStore(t, Config{Clock: c.now})
	put(t, s, key(1), []byte("first answer"), c.now())
	at := c.now()
	c.advance(time.Minute)
	got, kept, ok := s.Get(key(1))
	if !ok || string(got) != "first answer" || !kept.Equal(at) {
		t.Fatalf("Get = %q, %v, %v", got, kept, ok)
	}
	got[0] = 'X' // a copy: the store's value stays
	expect(t, s, key(1), []byte("first answer"))
	put(t, s, key(1), []byte("second"), c.now())
	expect(t, s, key(1), []byte("second"))
	if n, b := s.Len(); n != 1 || b != Cost(6) {
		t.Errorf("Len() = %d, %d; want the one value that replaced the other, %d", n, b, Cost(6))
	}
	s.Delete(key(1))
	expect(t, s, key(1), nil)
	if n, b := s.Len(); n != 0 || b != 0 {
		t.Errorf("Len() = %d, %d after Delete", n, b)
	}
}

// Each value expires at its own time, in any order; the sweep drops the
// expired ones no Get looked at.
func TestStoreExpiry(t *testing.T) {
	c := newClock()
	s := newStore(t, Config{Clock: c.now})
	now := c.now()
	s.Put(key(1), []byte("long"), nil, now.Add(time.Hour))
	s.Put(key(2), []byte("short"), nil, now.Add(time.Minute))
	s.Put(key(3), []byte("middle"), nil, now.Add(30*time.Minute))
	if s.Put(key(4), []byte("already gone"), nil, now) {
		t.Error("a value that expires now was kept")
	}
	c.advance(time.Minute)
	expect(t, s, key(2), nil)
	expect(t, s, key(1), []byte("long"))
	c.advance(30 * time.Minute)
	s.Sweep()
	if n, b := s.Len(); n != 1 || b != Cost(4) {
		t.Errorf("after the sweep: Len() = %d, %d; want the long one only", n, b)
	}
	expect(t, s, key(1), []byte("long"))
}

// When a value would pass the bound, the oldest go first, exactly as many
// as needed; a value that costs more than the bound is kept alone.
func TestStoreDropsOldestFirst(t *testing.T) {
	c := newClock()
	v := bytes.Repeat([]byte("v"), 1000)
	s := newStore(t, Config{MaxBytes: 3 * Cost(1000), Clock: c.now})
	for i := range 3 {
		put(t, s, key(i), v, c.now())
	}
	expect(t, s, key(0), v) // a Get does not make it younger
	put(t, s, key(3), v, c.now())
	expect(t, s, key(0), nil)
	for i := 1; i < 4; i++ {
		expect(t, s, key(i), v)
	}
	if _, b := s.Len(); b != 3*Cost(1000) {
		t.Errorf("bytes %d, want exactly the bound %d", b, 3*Cost(1000))
	}
	big := pattern(9, 4000)
	put(t, s, key(9), big, c.now())
	if n, b := s.Len(); n != 1 || b != Cost(4000) {
		t.Errorf("a value over the bound: Len() = %d, %d; want it alone", n, b)
	}
	expect(t, s, key(9), big)
	if s.Put(key(10), make([]byte, s.MaxLen()+1), nil, c.now().Add(time.Hour)) {
		t.Error("a value longer than MaxLen was kept")
	}
	expect(t, s, key(9), big) // a refused value pushes nothing out
}

// The case that zeroed replays: values of 1,000,000 bytes, far more than
// the bound holds, so that the ring goes round many times; the newest
// come back intact.
func TestStoreLargeValuesAcrossLaps(t *testing.T) {
	c := newClock()
	s := newStore(t, Config{MaxBytes: 64 << 20, Clock: c.now})
	for i := range 140 {
		put(t, s, key(i), pattern(i, 1_000_000), c.now())
	}
	n, _ := s.Len()
	if n < 60 {
		t.Fatalf("%d values kept of 140 of 1MB under 64MiB", n)
	}
	for i := 140 - n; i < 140; i++ {
		expect(t, s, key(i), pattern(i, 1_000_000))
	}
}

// Values replaced again and again leave holes in the ring; one put long
// ago and never replaced is still kept while the bound has room, moved
// along instead of dropped when the ring comes round to it.
func TestStoreKeepsOldValuesWhileTheBoundHasRoom(t *testing.T) {
	c := newClock()
	s := newStore(t, Config{MaxBytes: 256 << 10, Clock: c.now})
	rare := pattern(1, 3000)
	put(t, s, key(0), rare, c.now())
	for i := range 2000 { // 20 MB through a 256 KiB store, 10 keys
		put(t, s, key(1+i%10), pattern(i, 10_000), c.now())
	}
	expect(t, s, key(0), rare)
	for i := 1990; i < 2000; i++ {
		expect(t, s, key(1+i%10), pattern(i, 10_000))
	}
	if n, b := s.Len(); n != 11 || b != Cost(3000)+10*Cost(10_000) {
		t.Errorf("Len() = %d, %d", n, b)
	}
}

// A bound held by Limit replaces the configured one; the largest held
// applies; when it comes down the oldest go, and the rest stay intact
// in a ring of the new size.
func TestStoreLimit(t *testing.T) {
	c := newClock()
	s := newStore(t, Config{MaxBytes: 1 << 20, Clock: c.now})
	small := s.Limit(200 << 10)
	if s.MaxLen() != ringSize(200<<10) {
		t.Fatalf("MaxLen %d under a 200 KiB limit", s.MaxLen())
	}
	big := s.Limit(2 << 20)
	for i := range 30 {
		put(t, s, key(i), pattern(i, 50_000), c.now())
	}
	if n, _ := s.Len(); n != 30 {
		t.Fatalf("%d values under the larger limit, want all 30", n)
	}
	big()
	big() // twice does nothing
	n, b := s.Len()
	if b > 200<<10 || n != int(200<<10/Cost(50_000)) {
		t.Fatalf("after the large limit went: %d values, %d bytes", n, b)
	}
	for i := 30 - n; i < 30; i++ {
		expect(t, s, key(i), pattern(i, 50_000))
	}
	small()
	if s.MaxLen() != ringSize(1<<20) {
		t.Errorf("MaxLen %d with no limit held, want the configured bound's", s.MaxLen())
	}
	for i := 30 - n; i < 30; i++ {
		expect(t, s, key(i), pattern(i, 50_000))
	}
}

// Usage counts the stores of one user, apart from another user's.
func TestStoreUsage(t *testing.T) {
	var mine, theirs Usage
	c := newClock()
	a := newStore(t, Config{Usage: &mine, Clock: c.now})
	b := newStore(t, Config{Usage: &mine, Clock: c.now})
	o := newStore(t, Config{Usage: &theirs, MaxBytes: Cost(10), Clock: c.now})
	put(t, a, key(1), []byte("0123456789"), c.now())
	put(t, b, key(1), []byte("01234"), c.now())
	put(t, o, key(1), []byte("0123456789"), c.now())
	put(t, o, key(2), []byte("0123456789"), c.now()) // pushes the first out
	if mine.Values() != 2 || mine.Bytes() != Cost(10)+Cost(5) {
		t.Errorf("mine: %d values, %d bytes", mine.Values(), mine.Bytes())
	}
	if theirs.Values() != 1 || theirs.Bytes() != Cost(10) {
		t.Errorf("theirs: %d values, %d bytes", theirs.Values(), theirs.Bytes())
	}
	a.Close()
	a.Close()
	if mine.Values() != 1 || mine.Bytes() != Cost(5) {
		t.Errorf("mine after a closed: %d values, %d bytes", mine.Values(), mine.Bytes())
	}
	if a.Put(key(2), []byte("x"), nil, c.now().Add(time.Hour)) {
		t.Error("a closed store kept a value")
	}
	expect(t, a, key(1), nil)
}

// The store sweeps by itself while it holds values, at SweepEvery; and
// not at all when that is negative.
func TestStoreSweepsByItself(t *testing.T) {
	c := newClock()
	s := newStore(t, Config{Clock: c.now, SweepEvery: 10 * time.Millisecond})
	never := newStore(t, Config{Clock: c.now, SweepEvery: -1})
	for _, st := range []*Store{s, never} {
		st.Put(key(1), []byte("soon gone"), nil, c.now().Add(time.Minute))
	}
	c.advance(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := s.Len(); n != 0; n, _ = s.Len() {
		if time.Now().After(deadline) {
			t.Fatal("an expired value is still held after 5s of sweeps every 10ms")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, _ := never.Len(); n != 1 {
		t.Errorf("a store that sweeps only when told holds %d values, want the expired one", n)
	}
}
