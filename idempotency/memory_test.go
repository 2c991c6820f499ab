package idempotency

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a Config.Clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestMemory(t *testing.T, c Config) *Memory {
	m := NewMemory(c)
	t.Cleanup(m.Close)
	return m
}

// fpOf returns an fp for Begin that gives f and counts its calls.
func fpOf(f Fingerprint, calls *atomic.Int32) func() (Fingerprint, error) {
	return func() (Fingerprint, error) {
		if calls != nil {
			calls.Add(1)
		}
		return f, nil
	}
}

var (
	fpA = Fingerprint{1}
	fpB = Fingerprint{2}
	bg  = context.Background()
)

// sizeOf is a's Size, for an Answer that is not addressable.
func sizeOf(a Answer) int64 { return a.Size() }

func answer(status int, body string) Answer {
	return Answer{Status: status, Header: http.Header{"Content-Type": {"application/json"}, "X-Charge": {"ch_1"}}, Body: []byte(body), Whole: true}
}

// begin calls Begin and fails t on an error or another verdict.
func begin(t *testing.T, s Store, k Key, want Verdict, fp func() (Fingerprint, error)) Result {
	t.Helper()
	r, err := s.Begin(bg, k, time.Minute, 0, fp)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if r.Verdict != want {
		t.Fatalf("Begin: %s, want %s", r.Verdict, want)
	}
	if (r.Claim != nil) != (want == New) {
		t.Fatalf("Begin %s: claim %v", r.Verdict, r.Claim)
	}
	return r
}

// The first gets New, without its body read; a repeat after Keep gets the
// answer as it was kept, body read once, with a header of its own.
func TestMemoryReplay(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey([]string{"h"}, "k1")
	var calls atomic.Int32
	r := begin(t, m, k, New, fpOf(fpA, &calls))
	if calls.Load() != 0 {
		t.Error("the first request's body was read")
	}
	a := answer(201, `{"id":"ch_1"}`)
	size := a.Size()
	r.Claim.Keep(fpA, a)
	a.Body[0] = 'X' // the caller's buffer, reused
	a.Header.Set("X-Charge", "changed")

	for range 2 {
		rep := begin(t, m, k, Replay, fpOf(fpA, &calls))
		if rep.Answer.Status != 201 || string(rep.Answer.Body) != `{"id":"ch_1"}` || rep.Answer.Header.Get("X-Charge") != "ch_1" || !rep.Answer.Whole {
			t.Fatalf("replay %+v", rep.Answer)
		}
		rep.Answer.Header.Set("Idempotent-Replayed", "true")
	}
	if calls.Load() != 2 {
		t.Errorf("fp called %d times for 2 repeats", calls.Load())
	}
	if n, b := m.Len(); n != 1 || b != size {
		t.Errorf("Len() = %d, %d; want 1, %d", n, b, size)
	}
}

// Another fingerprint is a Mismatch; an answer not kept whole is Used,
// with status and header but no body.
func TestMemoryMismatchAndUsed(t *testing.T) {
	m := newTestMemory(t, Config{})
	k1, k2 := NewKey(nil, "k1"), NewKey(nil, "k2")
	begin(t, m, k1, New, nil).Claim.Keep(fpA, answer(200, "ok"))
	if r := begin(t, m, k1, Mismatch, fpOf(fpB, nil)); r.Answer != nil {
		t.Errorf("mismatch carries an answer: %+v", r.Answer)
	}
	big := answer(200, "partial")
	big.Whole = false
	begin(t, m, k2, New, nil).Claim.Keep(fpA, big)
	r := begin(t, m, k2, Used, fpOf(fpA, nil))
	if r.Answer == nil || r.Answer.Status != 200 || r.Answer.Header.Get("X-Charge") != "ch_1" || r.Answer.Body != nil || r.Answer.Whole {
		t.Errorf("used: %+v", r.Answer)
	}
	begin(t, m, k2, Mismatch, fpOf(fpB, nil)) // the fingerprint comes first
	if _, b := m.Len(); b != (&Answer{Status: 200, Header: big.Header}).Size()+sizeOf(answer(200, "ok")) {
		t.Errorf("bytes %d: the body of an answer not whole is counted", b)
	}
}

// An error reading the repeat's body is Begin's error; a nil fp where one
// is needed is an error, not a panic.
func TestMemoryFingerprintErrors(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey(nil, "k")
	begin(t, m, k, New, nil).Claim.Keep(fpA, answer(200, "ok"))
	boom := errors.New("body read failed")
	if _, err := m.Begin(bg, k, time.Minute, 0, func() (Fingerprint, error) { return Fingerprint{}, boom }); err != boom {
		t.Errorf("fp error: got %v", err)
	}
	if _, err := m.Begin(bg, k, time.Minute, 0, nil); err == nil {
		t.Error("nil fp: no error")
	}
	begin(t, m, k, Replay, fpOf(fpA, nil))
}

// A repeat while the first is in flight: InFlight at once with no wait,
// its body not read.
func TestMemoryInFlight(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey(nil, "k")
	first := begin(t, m, k, New, nil)
	var calls atomic.Int32
	start := time.Now()
	begin(t, m, k, InFlight, fpOf(fpA, &calls))
	if d := time.Since(start); d > 10*time.Millisecond || calls.Load() != 0 {
		t.Errorf("InFlight after %s, fp called %d times", d, calls.Load())
	}
	first.Claim.Release()
	begin(t, m, k, New, nil) // released: free again
}

// A completed record lives for the TTL, then the key is free.
func TestMemoryTTL(t *testing.T) {
	clock := newClock()
	m := newTestMemory(t, Config{TTL: time.Hour, Clock: clock.now})
	k := NewKey(nil, "k")
	begin(t, m, k, New, nil).Claim.Keep(fpA, answer(200, "ok"))
	clock.advance(time.Hour - time.Nanosecond)
	begin(t, m, k, Replay, fpOf(fpA, nil))
	clock.advance(time.Nanosecond)
	begin(t, m, k, New, nil)
	if n, b := m.Len(); n != 1 || b != 0 {
		t.Errorf("Len() = %d, %d; want the new claim only", n, b)
	}
}

// Past MaxMemory the oldest completed records go first; in-flight ones
// never do.
func TestMemoryEvictsOldestFirst(t *testing.T) {
	a := answer(200, string(make([]byte, 1000)))
	size := a.Size()
	m := newTestMemory(t, Config{MaxMemory: 3 * size})
	key := func(i int) Key { return NewKey(nil, string(rune('a'+i))) }
	flying := begin(t, m, NewKey(nil, "in flight"), New, nil)
	for i := range 5 {
		begin(t, m, key(i), New, nil).Claim.Keep(fpA, a)
		if _, b := m.Len(); b > 3*size {
			t.Fatalf("after %d answers: %d bytes, past MaxMemory %d", i+1, b, 3*size)
		}
	}
	for i := range 2 {
		begin(t, m, key(i), New, nil).Claim.Release() // dropped: free again
	}
	for i := 2; i < 5; i++ {
		begin(t, m, key(i), Replay, fpOf(fpA, nil))
	}
	begin(t, m, NewKey(nil, "in flight"), InFlight, nil)
	if n, b := m.Len(); n != 4 || b != 3*size {
		t.Errorf("Len() = %d, %d; want 3 answers and the in-flight record, %d bytes", n, b, 3*size)
	}
	flying.Claim.Release()
}

// An answer larger than MaxMemory on its own is kept as status and
// header only, and pushes out nothing.
func TestMemoryOversizedAnswer(t *testing.T) {
	small := answer(200, "ok")
	m := newTestMemory(t, Config{MaxMemory: 4 * small.Size()})
	begin(t, m, NewKey(nil, "small"), New, nil).Claim.Keep(fpA, small)
	begin(t, m, NewKey(nil, "big"), New, nil).Claim.Keep(fpA, answer(200, string(make([]byte, 10*small.Size()))))
	r := begin(t, m, NewKey(nil, "big"), Used, fpOf(fpA, nil))
	if r.Answer.Status != 200 || r.Answer.Header.Get("X-Charge") != "ch_1" {
		t.Errorf("oversized answer kept as %+v", r.Answer)
	}
	begin(t, m, NewKey(nil, "small"), Replay, fpOf(fpA, nil))
}

// An in-flight record past its lease counts as released: the next Begin
// claims it, and the old claim's late Keep keeps nothing. Before anyone
// claims it, a late Keep still counts.
func TestMemoryLease(t *testing.T) {
	clock := newClock()
	m := newTestMemory(t, Config{Clock: clock.now})
	k := NewKey(nil, "k")
	old, err := m.Begin(bg, k, time.Second, 0, nil)
	if err != nil || old.Verdict != New {
		t.Fatal(old, err)
	}
	clock.advance(999 * time.Millisecond)
	begin(t, m, k, InFlight, nil)
	clock.advance(time.Millisecond)
	next := begin(t, m, k, New, nil)
	old.Claim.Keep(fpB, answer(500, "late"))
	begin(t, m, k, InFlight, nil)
	next.Claim.Keep(fpA, answer(200, "ok"))
	if r := begin(t, m, k, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "ok" {
		t.Errorf("replayed %q", r.Answer.Body)
	}

	k2 := NewKey(nil, "k2")
	late, _ := m.Begin(bg, k2, time.Second, 0, nil)
	clock.advance(time.Hour)
	late.Claim.Keep(fpA, answer(200, "late but kept"))
	if r := begin(t, m, k2, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "late but kept" {
		t.Errorf("replayed %q", r.Answer.Body)
	}
}

// A claim ends once: the second call of Keep or Release does nothing.
func TestClaimEndsOnce(t *testing.T) {
	m := newTestMemory(t, Config{})
	k1, k2 := NewKey(nil, "k1"), NewKey(nil, "k2")
	c := begin(t, m, k1, New, nil).Claim
	c.Keep(fpA, answer(200, "first"))
	c.Release()
	c.Keep(fpA, answer(200, "second"))
	if r := begin(t, m, k1, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "first" {
		t.Errorf("replayed %q", r.Answer.Body)
	}
	c = begin(t, m, k2, New, nil).Claim
	c.Release()
	next := begin(t, m, k2, New, nil)
	c.Keep(fpA, answer(200, "late"))
	c.Release()
	begin(t, m, k2, InFlight, nil) // next's claim still holds
	next.Claim.Release()
}

// Ten at once with one key: one is sent, the others are told it is in
// flight.
func TestMemoryConcurrentBegin(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey(nil, "k")
	var news, inflight atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 10 {
		wg.Go(func() {
			<-start
			r, err := m.Begin(bg, k, time.Minute, 0, fpOf(fpA, nil))
			switch {
			case err != nil:
				t.Error(err)
			case r.Verdict == New:
				news.Add(1)
			case r.Verdict == InFlight:
				inflight.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if news.Load() != 1 || inflight.Load() != 9 {
		t.Errorf("%d New and %d InFlight, want 1 and 9", news.Load(), inflight.Load())
	}
}

// Many keys, claims, keeps and releases at once, for the race detector;
// the counts come back to what is left.
func TestMemoryConcurrentMixed(t *testing.T) {
	m := newTestMemory(t, Config{MaxMemory: 20 * sizeOf(answer(200, "ok"))})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := NewKey(nil, string(rune('a'+(g+i)%26)))
				r, err := m.Begin(bg, k, time.Minute, time.Millisecond, fpOf(fpA, nil))
				if err != nil {
					t.Error(err)
					return
				}
				if r.Verdict == New {
					if i%3 == 0 {
						r.Claim.Release()
					} else {
						r.Claim.Keep(fpA, answer(200, "ok"))
					}
				}
			}
		})
	}
	wg.Wait()
	n, b := m.Len()
	if n > 26 || b > 20*sizeOf(answer(200, "ok")) {
		t.Errorf("Len() = %d, %d", n, b)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var listed int
	for r := m.done.head; r != nil; r = r.next {
		listed++
	}
	if listed != n || m.flying.head != nil {
		t.Errorf("%d records in the map, %d in the done list, in flight %v", n, listed, m.flying.head != nil)
	}
}
