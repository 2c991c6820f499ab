package idempotency

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strings"
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
	r, err := s.Begin(bg, k, Params{}, fp)
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
	if _, err := m.Begin(bg, k, Params{}, func() (Fingerprint, error) { return Fingerprint{}, boom }); err != boom {
		t.Errorf("fp error: got %v", err)
	}
	if _, err := m.Begin(bg, k, Params{}, nil); err == nil {
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

// Every answer up to the bound is kept whole and replayed, whatever the
// bound (not a multiple of any chunk) and whatever the ring held before
// (answers over half the bound, which could not wrap in the old ring,
// and one larger than the room left in an empty ring's lap); answers go
// only as room needs.
func TestMemoryKeepsEveryAnswerUpToTheBound(t *testing.T) {
	for _, bound := range []int64{100_000, 1<<20 + 1, 3*64<<10 - 7} {
		m := newTestMemory(t, Config{MaxMemory: bound})
		sizes := []int{int(bound * 6 / 10), int(bound * 7 / 10), 10, int(bound) - 1000, int(bound / 3), int(bound / 3), 1}
		for i, n := range sizes {
			k := NewKey(nil, fmt.Sprint(bound, i))
			body := bytes.Repeat([]byte{byte(i) | 1}, n)
			begin(t, m, k, New, nil).Claim.Keep(fpA, Answer{Status: 201, Body: body, Whole: true})
			r := begin(t, m, k, Replay, fpOf(fpA, nil))
			if !bytes.Equal(r.Answer.Body, body) || r.Answer.Status != 201 {
				t.Fatalf("bound %d, answer %d of %d bytes: replayed %d bytes, status %d", bound, i, n, len(r.Answer.Body), r.Answer.Status)
			}
			if _, b := m.Len(); b > max(bound, sizeOf(Answer{Status: 201, Body: body, Whole: true})) {
				t.Fatalf("bound %d: %d bytes kept", bound, b)
			}
		}
		// the last two fit beside the one before them
		for i := len(sizes) - 3; i < len(sizes); i++ {
			begin(t, m, NewKey(nil, fmt.Sprint(bound, i)), Replay, fpOf(fpA, nil))
		}
	}
}

// 140 answers of 1,000,000 bytes under the default 64MiB, then the last
// 60 repeated: every one the store still holds replays byte for byte
// (the ring went round; no chunk holding one went back to the system).
func TestMemoryReplaysLargeAnswersIntact(t *testing.T) {
	m := newTestMemory(t, Config{})
	body := func(i int) []byte {
		b := bytes.Repeat([]byte(fmt.Sprintf("answer %03d ", i)), 1_000_000/11+1)
		return b[:1_000_000]
	}
	for i := range 140 {
		begin(t, m, NewKey(nil, fmt.Sprint(i)), New, nil).Claim.Keep(fpA, Answer{Status: 201, Body: body(i), Whole: true})
	}
	for i := 80; i < 140; i++ {
		r := begin(t, m, NewKey(nil, fmt.Sprint(i)), Replay, fpOf(fpA, nil))
		if !bytes.Equal(r.Answer.Body, body(i)) {
			n := 0
			for _, c := range r.Answer.Body {
				if c == 0 {
					n++
				}
			}
			t.Fatalf("answer %d replayed changed: %d bytes, %d of them zero", i, len(r.Answer.Body), n)
		}
	}
}

// An answer larger than the store can hold keeps its status and header
// (a repeat gets Used), pushes nothing out, and never frees its key;
// one whose header is too large as well keeps its status alone.
func TestMemoryOversizedAnswer(t *testing.T) {
	small := answer(200, "ok")
	m := newTestMemory(t, Config{MaxMemory: 4 * small.Size()})
	begin(t, m, NewKey(nil, "small"), New, nil).Claim.Keep(fpA, small)
	begin(t, m, NewKey(nil, "big"), New, nil).Claim.Keep(fpA, answer(200, string(make([]byte, 1<<20))))
	r := begin(t, m, NewKey(nil, "big"), Used, fpOf(fpA, nil))
	if r.Answer.Status != 200 || r.Answer.Header.Get("X-Charge") != "ch_1" || r.Answer.Body != nil {
		t.Errorf("oversized answer kept as %+v", r.Answer)
	}
	begin(t, m, NewKey(nil, "small"), Replay, fpOf(fpA, nil))

	huge := Answer{Status: 201, Header: http.Header{"X-Huge": {strings.Repeat("h", 1<<20)}}, Body: []byte("ok"), Whole: true}
	begin(t, m, NewKey(nil, "huge"), New, nil).Claim.Keep(fpA, huge)
	if r := begin(t, m, NewKey(nil, "huge"), Used, fpOf(fpA, nil)); r.Answer.Status != 201 || r.Answer.Header != nil {
		t.Errorf("answer with an oversized header kept as %+v", r.Answer)
	}
}

// An in-flight record has no expiry: a first request that takes days
// still holds its key through every sweep, and its late Keep is kept.
func TestMemoryClaimLastsUntilItEnds(t *testing.T) {
	clock := newClock()
	m := newTestMemory(t, Config{TTL: time.Hour, Clock: clock.now})
	k := NewKey(nil, "k")
	first := begin(t, m, k, New, nil)
	for range 3 {
		clock.advance(24 * time.Hour)
		m.Sweep()
		begin(t, m, k, InFlight, nil)
	}
	if n, _ := m.Len(); n != 1 {
		t.Errorf("%d records, want the claim", n)
	}
	first.Claim.Keep(fpA, answer(200, "late but kept"))
	if r := begin(t, m, k, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "late but kept" {
		t.Errorf("replayed %q", r.Answer.Body)
	}
}

// Each Begin gives the TTL of its own answer: records of transports
// with other ttl settings live side by side in one Memory.
func TestMemoryTTLPerBegin(t *testing.T) {
	clock := newClock()
	m := newTestMemory(t, Config{TTL: time.Hour, Clock: clock.now})
	short, long, dflt := NewKey(nil, "short"), NewKey(nil, "long"), NewKey(nil, "default")
	for k, ttl := range map[Key]time.Duration{short: time.Minute, long: 48 * time.Hour, dflt: 0} {
		r, err := m.Begin(bg, k, Params{TTL: ttl}, nil)
		if err != nil || r.Verdict != New {
			t.Fatal(r, err)
		}
		r.Claim.Keep(fpA, answer(200, "ok"))
	}
	clock.advance(time.Minute)
	begin(t, m, short, New, nil).Claim.Release()
	begin(t, m, dflt, Replay, fpOf(fpA, nil))
	clock.advance(time.Hour)
	begin(t, m, dflt, New, nil).Claim.Release()
	begin(t, m, long, Replay, fpOf(fpA, nil))
	clock.advance(47 * time.Hour)
	begin(t, m, long, New, nil).Claim.Release()
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
			r, err := m.Begin(bg, k, Params{}, fpOf(fpA, nil))
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
				r, err := m.Begin(bg, k, Params{Wait: time.Millisecond}, fpOf(fpA, nil))
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
	if len(m.flying) != 0 {
		t.Errorf("%d records still in flight", len(m.flying))
	}
}

// What a first request costs the store: Begin and Keep of a small
// answer, each with its own key.
func BenchmarkMemoryBeginKeep(b *testing.B) {
	m := NewMemory(Config{})
	defer m.Close()
	a := answer(201, `{"id":"ch_1","status":"succeeded"}`)
	var k Key
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		binary.LittleEndian.PutUint64(k[:], uint64(i))
		r, _ := m.Begin(bg, k, Params{}, nil)
		r.Claim.Keep(fpA, a)
	}
}

// What a repeat costs the store: Begin that finds a small answer and
// replays it.
func BenchmarkMemoryReplay(b *testing.B) {
	m := NewMemory(Config{})
	defer m.Close()
	k := NewKey(nil, "k")
	r, _ := m.Begin(bg, k, Params{}, nil)
	r.Claim.Keep(fpA, answer(201, `{"id":"ch_1","status":"succeeded"}`))
	fp := fpOf(fpA, nil)
	b.ReportAllocs()
	for b.Loop() {
		m.Begin(bg, k, Params{}, fp)
	}
}
