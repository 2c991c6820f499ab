package fleet

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Two instances hammering one bucket get no more than the fleet's rate
// plus its burst between them, and not much less.
func TestReserveHoldsForTheFleet(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	a := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	b := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	l := Limit{Rate: 50, Burst: 5}
	const run = 2 * time.Second

	var granted, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, m := range []*Member{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < run {
				_, _, ok, err := m.Reserve(context.Background(), "api", l, 0)
				switch {
				case err != nil:
					failed.Add(1)
				case ok:
					granted.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	limit := l.Rate*elapsed.Seconds() + float64(l.Burst)
	t.Logf("%d tokens in %s (at most %.1f), %d errors", granted.Load(), elapsed, limit, failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d reservations failed", failed.Load())
	}
	if float64(granted.Load()) > limit {
		t.Errorf("granted %d tokens in %s: more than rate*time+burst = %.1f", granted.Load(), elapsed, limit)
	}
	if float64(granted.Load()) < 0.8*l.Rate*run.Seconds() {
		t.Errorf("granted only %d tokens in %s at %v/s", granted.Load(), elapsed, l.Rate)
	}
}

// A reservation waits at most maxWait; one that would wait longer is
// refused, says when a token would be there, and takes nothing.
func TestReserveRespectsMaxWait(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	m := joinPatient(t, newProcess(t), rs.URL(), uniquePrefix(t), nil)
	ctx := context.Background()
	l := Limit{Rate: 10, Burst: 2} // a token every 100ms

	for i := range 2 {
		if wait, _, ok, err := m.Reserve(ctx, "k", l, 0); err != nil || !ok || wait != 0 {
			t.Fatalf("burst token %d: wait %s ok %v err %v", i, wait, ok, err)
		}
	}
	maxWait := 150 * time.Millisecond
	wait, _, ok, err := m.Reserve(ctx, "k", l, maxWait)
	if err != nil || !ok || wait <= 50*time.Millisecond || wait > 100*time.Millisecond {
		t.Fatalf("third token: wait %s ok %v err %v, want a wait in (50ms, 100ms]", wait, ok, err)
	}
	// The next token is ~200ms off: beyond maxWait.
	wait, retryAfter, ok, err := m.Reserve(ctx, "k", l, maxWait)
	if err != nil || ok || wait != 0 || retryAfter <= maxWait || retryAfter > 200*time.Millisecond {
		t.Fatalf("fourth token: wait %s retryAfter %s ok %v err %v, want refused with retryAfter in (%s, 200ms]", wait, retryAfter, ok, err, maxWait)
	}
	// Had the refusal taken a token, this one would be ~300ms off.
	wait, _, ok, err = m.Reserve(ctx, "k", l, 250*time.Millisecond)
	if err != nil || !ok || wait > retryAfter {
		t.Fatalf("after the refusal: wait %s ok %v err %v, want granted within %s", wait, ok, err, retryAfter)
	}
}

// A token given back is there for the next reservation, and a refund
// of a full bucket grants nothing extra.
func TestRefundGivesTheTokenBack(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	m := joinPatient(t, newProcess(t), rs.URL(), uniquePrefix(t), nil)
	ctx := context.Background()
	l := Limit{Rate: 1, Burst: 1} // one token a second

	if _, _, ok, err := m.Reserve(ctx, "k", l, 0); err != nil || !ok {
		t.Fatalf("first token: ok %v err %v", ok, err)
	}
	if _, _, ok, err := m.Reserve(ctx, "k", l, 0); err != nil || ok {
		t.Fatalf("second token at once: ok %v err %v, want refused", ok, err)
	}
	// a client that waited for a token left: it is given back
	if err := m.Refund(ctx, "k", l); err != nil {
		t.Fatal(err)
	}
	if wait, _, ok, err := m.Reserve(ctx, "k", l, 0); err != nil || !ok || wait != 0 {
		t.Fatalf("after the refund: wait %s ok %v err %v, want the token now", wait, ok, err)
	}
	// refunds do not fill the bucket past its burst
	for range 3 {
		if err := m.Refund(ctx, "k", l); err != nil {
			t.Fatal(err)
		}
	}
	granted := 0
	for range 3 {
		if _, _, ok, err := m.Reserve(ctx, "k", l, 0); err == nil && ok {
			granted++
		}
	}
	if granted != 1 {
		t.Fatalf("%d tokens at once after refunding a full bucket, want its burst of 1", granted)
	}
}

// A pause empties the bucket until its end: no token before then, and
// after it the bucket refills at the rate rather than granting a burst.
func TestPauseEmptiesTheBucket(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	a := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	b := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	ctx := context.Background()
	l := Limit{Rate: 20, Burst: 10} // a token every 50ms

	until := time.Now().Add(400 * time.Millisecond)
	if err := a.Pause(ctx, "k", l, until); err != nil {
		t.Fatal(err)
	}
	// B, which did not see the 429, waits too: a long enough wait is
	// granted past the pause, a short one is refused.
	if _, retryAfter, ok, err := b.Reserve(ctx, "k", l, 0); err != nil || ok || retryAfter < time.Until(until)-10*time.Millisecond {
		t.Fatalf("during the pause: ok %v retryAfter %s err %v, want refused until the pause ends (%s)", ok, retryAfter, err, time.Until(until))
	}
	if wait, _, ok, err := b.Reserve(ctx, "k", l, time.Second); err != nil || !ok || wait < time.Until(until)-10*time.Millisecond {
		t.Fatalf("reserving past the pause: wait %s ok %v err %v, want a wait to the end of the pause (%s)", wait, ok, err, time.Until(until))
	}

	const after = 300 * time.Millisecond
	var early, late int
	for time.Now().Before(until.Add(after)) {
		_, _, ok, err := b.Reserve(ctx, "k", l, 0)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if time.Now().Before(until) {
				early++
			} else {
				late++
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("tokens: %d before the end of the pause, %d in the %s after it", early, late, after)
	if early > 0 {
		t.Errorf("%d tokens granted during the pause", early)
	}
	// Empty at the end of the pause: at most rate*after (6) tokens, one
	// of them reserved above; a full bucket would have granted 10 at once.
	if max := int(l.Rate*after.Seconds()) + 1; late > max || late == 0 {
		t.Errorf("%d tokens in the %s after the pause, want 1 to %d", late, after, max)
	}
}

func TestLimitValidated(t *testing.T) {
	t.Parallel()
	m, err := newProcess(t).join(Options{URL: "redis://127.0.0.1:1/0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []Limit{{Rate: 0, Burst: 1}, {Rate: -1, Burst: 1}, {Rate: 1, Burst: 0}} {
		if _, _, _, err := m.Reserve(context.Background(), "k", l, 0); err == nil || err == ErrNotConnected {
			t.Errorf("Reserve with %+v: %v, want a validation error", l, err)
		}
		if err := m.Pause(context.Background(), "k", l, time.Now().Add(time.Second)); err == nil || err == ErrNotConnected {
			t.Errorf("Pause with %+v: %v, want a validation error", l, err)
		}
	}
}
