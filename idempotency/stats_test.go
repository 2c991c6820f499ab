package idempotency

import (
	"testing"
	"time"
)

// delta returns Stats() minus what it was at base.
func delta(base [2]int64) (records, bytes int64) {
	r, b := Stats()
	return r - base[0], b - base[1]
}

func statsNow() [2]int64 {
	r, b := Stats()
	return [2]int64{r, b}
}

// Stats and Len follow records as they are claimed, kept, released,
// dropped for memory and closed, over every open store.
func TestStatsFollowRecords(t *testing.T) {
	base := statsNow()
	a := answer(200, "ok")
	size := a.Size()
	m1 := NewMemory(Config{MaxMemory: 2 * size})
	m2 := NewMemory(Config{})
	check := func(what string, records, bytes int64) {
		t.Helper()
		if r, b := delta(base); r != records || b != bytes {
			t.Errorf("%s: Stats moved by %d records, %d bytes; want %d, %d", what, r, b, records, bytes)
		}
	}

	c1 := begin(t, m1, NewKey(nil, "1"), New, nil).Claim
	c2 := begin(t, m2, NewKey(nil, "2"), New, nil).Claim
	check("two in flight", 2, 0)
	if n, b := m1.Len(); n != 1 || b != 0 {
		t.Errorf("m1.Len() = %d, %d", n, b)
	}
	c1.Keep(fpA, a)
	check("one kept", 2, size)
	c2.Release()
	check("one released", 1, size)
	for _, k := range []string{"3", "4"} {
		begin(t, m1, NewKey(nil, k), New, nil).Claim.Keep(fpA, a)
	}
	check("past MaxMemory, the oldest dropped", 2, 2*size)
	if n, b := m1.Len(); n != 2 || b != 2*size {
		t.Errorf("m1.Len() = %d, %d", n, b)
	}
	begin(t, m2, NewKey(nil, "5"), New, nil)
	check("another in flight", 3, 2*size)
	m1.Close()
	check("m1 closed", 1, 0)
	m2.Close()
	check("both closed", 0, 0)
	m2.Close()
	check("closed twice", 0, 0)
}

// The sweep drops what expired and what outlived its lease though no
// Begin looked at it, and stops sweeping once the store is empty.
func TestSweep(t *testing.T) {
	base := statsNow()
	clock := newClock()
	m := newTestMemory(t, Config{TTL: time.Hour, Clock: clock.now})
	begin(t, m, NewKey(nil, "old"), New, nil).Claim.Keep(fpA, answer(200, "ok"))
	clock.advance(30 * time.Minute)
	begin(t, m, NewKey(nil, "young"), New, nil).Claim.Keep(fpA, answer(200, "ok"))
	if _, err := m.Begin(bg, NewKey(nil, "stuck"), 45*time.Minute, 0, nil); err != nil {
		t.Fatal(err)
	}
	if !m.armed {
		t.Fatal("records and no sweep armed")
	}
	clock.advance(30 * time.Minute)
	m.sweepNow()
	if n, _ := m.Len(); n != 2 {
		t.Errorf("after the first's TTL: %d records, want the young and the stuck", n)
	}
	clock.advance(15 * time.Minute)
	m.sweepNow()
	if n, _ := m.Len(); n != 1 {
		t.Errorf("after the lease: %d records, want the young one", n)
	}
	clock.advance(15 * time.Minute)
	m.sweepNow()
	if n, b := m.Len(); n != 0 || b != 0 || m.armed {
		t.Errorf("all expired: %d records, %d bytes, sweep armed %v", n, b, m.armed)
	}
	if r, b := delta(base); r != 0 || b != 0 {
		t.Errorf("Stats moved by %d, %d", r, b)
	}
	begin(t, m, NewKey(nil, "again"), New, nil)
	if !m.armed {
		t.Error("a new record and no sweep armed")
	}
}
