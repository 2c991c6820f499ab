package idempotency

import (
	"context"
	"errors"
	"testing"
	"time"
)

// waiters returns how many repeats wait on k's record, and whether the
// record holds a channel for them.
func waiters(m *Memory, k Key) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.flying[k]
	if f == nil {
		return 0, false
	}
	return f.waiters, f.wake != nil
}

// waitFor polls cond until it holds, failing t after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}

type outcome struct {
	r   Result
	err error
	at  time.Time
}

// beginAsync runs Begin in a goroutine; its outcome comes on the channel.
func beginAsync(ctx context.Context, s Store, k Key, wait time.Duration, fp Fingerprint) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		r, err := s.Begin(ctx, k, Params{Wait: wait}, fpOf(fp, nil))
		ch <- outcome{r, err, time.Now()}
	}()
	return ch
}

// expectNothing fails t if ch delivers within d.
func expectNothing(t *testing.T, ch <-chan outcome, d time.Duration, what string) {
	t.Helper()
	select {
	case o := <-ch:
		t.Fatalf("%s returned %s, %v; want it still waiting", what, o.r.Verdict, o.err)
	case <-time.After(d):
	}
}

// receive returns what ch delivers, failing t after d.
func receive(t *testing.T, ch <-chan outcome, d time.Duration, what string) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
		return outcome{}
	}
}

// A repeat that may wait gets the first's answer as soon as it is kept;
// one with another fingerprint gets Mismatch.
func TestWaitThenReplay(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey(nil, "k")
	first := begin(t, m, k, New, nil)
	same := beginAsync(bg, m, k, 10*time.Second, fpA)
	other := beginAsync(bg, m, k, 10*time.Second, fpB)
	waitFor(t, time.Second, "two waiters", func() bool { n, _ := waiters(m, k); return n == 2 })
	expectNothing(t, same, 20*time.Millisecond, "a repeat while the first is in flight")

	kept := time.Now()
	first.Claim.Keep(fpA, answer(200, "ok"))
	o := receive(t, same, time.Second, "the waiting repeat")
	if o.err != nil || o.r.Verdict != Replay || string(o.r.Answer.Body) != "ok" {
		t.Fatalf("waiter got %s %+v, %v; want the replay", o.r.Verdict, o.r.Answer, o.err)
	}
	if d := o.at.Sub(kept); d > 100*time.Millisecond {
		t.Errorf("replay came %s after Keep", d)
	}
	if o := receive(t, other, time.Second, "the other repeat"); o.err != nil || o.r.Verdict != Mismatch {
		t.Errorf("waiter with another fingerprint got %s, %v; want mismatch", o.r.Verdict, o.err)
	}
}

// When the first is released while repeats wait, exactly one of them
// claims the key; the others go on waiting, for that one.
func TestWaitReleaseHandsOver(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey(nil, "k")
	first := begin(t, m, k, New, nil)
	const n = 5
	merged := make(chan outcome, n)
	for range n {
		ch := beginAsync(bg, m, k, 10*time.Second, fpA)
		go func() { merged <- <-ch }()
	}
	waitFor(t, time.Second, "all waiting", func() bool { w, _ := waiters(m, k); return w == n })

	first.Claim.Release()
	o := receive(t, merged, time.Second, "one waiter")
	if o.err != nil || o.r.Verdict != New {
		t.Fatalf("first waiter back: %s, %v; want new", o.r.Verdict, o.err)
	}
	expectNothing(t, merged, 50*time.Millisecond, "the other waiters")
	waitFor(t, time.Second, "the others wait for the new first", func() bool { w, _ := waiters(m, k); return w == n-1 })

	o.r.Claim.Keep(fpA, answer(200, "from the second"))
	for i := range n - 1 {
		o := receive(t, merged, time.Second, "the other waiters")
		if o.err != nil || o.r.Verdict != Replay || string(o.r.Answer.Body) != "from the second" {
			t.Fatalf("waiter %d: %s %+v, %v; want the replay of the new first", i, o.r.Verdict, o.r.Answer, o.err)
		}
	}
}

// When wait runs out, InFlight, and the record keeps no trace of the
// waiter.
func TestWaitRunsOut(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey(nil, "k")
	first := begin(t, m, k, New, nil)
	start := time.Now()
	r, err := m.Begin(bg, k, Params{Wait: 80 * time.Millisecond}, fpOf(fpA, nil))
	if d := time.Since(start); err != nil || r.Verdict != InFlight || d < 80*time.Millisecond || d > time.Second {
		t.Fatalf("%s, %v after %s; want InFlight after the 80ms wait", r.Verdict, err, d)
	}
	if w, ch := waiters(m, k); w != 0 || ch {
		t.Errorf("after the wait: %d waiters, channel %v", w, ch)
	}
	first.Claim.Keep(fpA, answer(200, "ok"))
}

// A canceled repeat returns ctx's error at once, and leaves no trace.
func TestWaitCanceled(t *testing.T) {
	m := newTestMemory(t, Config{})
	k := NewKey(nil, "k")
	first := begin(t, m, k, New, nil)
	ctx, cancel := context.WithCancel(bg)
	stays := beginAsync(bg, m, k, 10*time.Second, fpA)
	leaves := beginAsync(ctx, m, k, 10*time.Second, fpA)
	waitFor(t, time.Second, "two waiters", func() bool { w, _ := waiters(m, k); return w == 2 })
	cancel()
	canceled := time.Now()
	o := receive(t, leaves, time.Second, "the canceled repeat")
	if !errors.Is(o.err, context.Canceled) || o.at.Sub(canceled) > 50*time.Millisecond {
		t.Errorf("canceled waiter: %v after %s", o.err, o.at.Sub(canceled))
	}
	if w, ch := waiters(m, k); w != 1 || !ch {
		t.Errorf("after one left: %d waiters, channel %v; want 1, true", w, ch)
	}

	short, cancel2 := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel2()
	if _, err := m.Begin(short, k, Params{Wait: 10 * time.Second}, fpOf(fpA, nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait past the context's deadline: %v", err)
	}
	first.Claim.Keep(fpA, answer(200, "ok"))
	if o := receive(t, stays, time.Second, "the remaining waiter"); o.r.Verdict != Replay {
		t.Errorf("the remaining waiter got %s", o.r.Verdict)
	}
	if w, ch := waiters(m, k); w != 0 || ch {
		t.Errorf("once completed: %d waiters, channel %v", w, ch)
	}
}

// Close wakes the waiters with InFlight (the first may still be under
// way); a Begin after Close goes on as unkeyed.
func TestMemoryClose(t *testing.T) {
	m := NewMemory(Config{})
	k := NewKey(nil, "k")
	first := begin(t, m, k, New, nil)
	ch := beginAsync(bg, m, k, 10*time.Second, fpA)
	waitFor(t, time.Second, "a waiter", func() bool { w, _ := waiters(m, k); return w == 1 })
	m.Close()
	if o := receive(t, ch, time.Second, "the waiter"); o.err != nil || o.r.Verdict != InFlight {
		t.Errorf("waiter at Close: %s, %v; want in_flight", o.r.Verdict, o.err)
	}
	first.Claim.Keep(fpA, answer(200, "ok"))
	r := begin(t, m, k, New, nil)
	r.Claim.Keep(fpA, answer(200, "ok"))
	begin(t, m, k, New, nil)
	if n, b := m.Len(); n != 0 || b != 0 {
		t.Errorf("closed store holds %d records, %d bytes", n, b)
	}
	m.Close()
}
