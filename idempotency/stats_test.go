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

// The sweep drops what expired though no Begin looked at it, each
// record at its own TTL, and never a record in flight.
func TestSweep(t *testing.T) {
	base := statsNow()
	clock := newClock()
	m := newTestMemory(t, Config{TTL: time.Hour, Clock: clock.now})
	keep := func(name string, ttl time.Duration) {
		r, err := m.Begin(bg, NewKey(nil, name), Params{TTL: ttl}, nil)
		if err != nil || r.Verdict != New {
			t.Fatal(r, err)
		}
		r.Claim.Keep(fpA, answer(200, "ok"))
	}
	keep("old", 0)
	clock.advance(30 * time.Minute)
	keep("young", 0)
	keep("brief", time.Minute)
	stuck := begin(t, m, NewKey(nil, "stuck"), New, nil)
	clock.advance(time.Minute)
	m.Sweep()
	if n, _ := m.Len(); n != 3 {
		t.Errorf("after the brief one's TTL: %d records, want the old, the young and the one in flight", n)
	}
	clock.advance(30 * time.Minute)
	m.Sweep()
	if n, _ := m.Len(); n != 2 {
		t.Errorf("after the old one's TTL: %d records, want the young and the one in flight", n)
	}
	clock.advance(48 * time.Hour)
	m.Sweep()
	if n, b := m.Len(); n != 1 || b != 0 {
		t.Errorf("all expired: %d records, %d bytes; want the one in flight", n, b)
	}
	stuck.Claim.Release()
	if r, b := delta(base); r != 0 || b != 0 {
		t.Errorf("Stats moved by %d, %d", r, b)
	}
}
