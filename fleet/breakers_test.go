package fleet

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// A breaker that opens on one instance opens on the others within a
// second, with the same end and open period; the instance that
// published it does not hear it back; later changes follow in order.
func TestBreakerStateReachesOthersNotItself(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	a := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	b := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)

	var atA, atB recorder[BreakerState]
	defer a.OnBreaker(atA.add)()
	defer b.OnBreaker(atB.add)()
	time.Sleep(2 * receivePoll) // let the registration replays (of nothing) pass

	until := time.Now().Add(5 * time.Second)
	start := time.Now()
	a.PublishBreaker(BreakerState{Upstream: "api.example:443", Settings: "s1", State: StateOpen, Until: until, Period: 8 * time.Second})
	got := atB.find(t, time.Second, "open state at B", func(s BreakerState) bool { return s.State == StateOpen })
	t.Logf("open reached B in %s", time.Since(start))
	if got.Upstream != "api.example:443" || got.Settings != "s1" || got.Origin != a.ID() || got.Period != 8*time.Second {
		t.Errorf("B got %+v", got)
	}
	if d := got.Until.Sub(until); d < -time.Second || d > time.Second {
		t.Errorf("B's Until is %s off the publisher's", d)
	}

	a.PublishBreaker(BreakerState{Upstream: "api.example:443", Settings: "s1", State: StateHalfOpen, Period: 8 * time.Second})
	a.PublishBreaker(BreakerState{Upstream: "api.example:443", Settings: "s1", State: StateClosed})
	atB.find(t, time.Second, "closed state at B", func(s BreakerState) bool { return s.State == StateClosed })
	if h := atB.find(t, 0, "half-open state at B", func(s BreakerState) bool { return s.State == StateHalfOpen }); h.Period != 8*time.Second {
		t.Errorf("B got the half-open state with period %v, want the 8s that ended", h.Period)
	}
	var states []string
	for _, s := range atB.all() {
		states = append(states, s.State)
	}
	if want := []string{StateOpen, StateHalfOpen, StateClosed}; len(states) != 3 || states[0] != want[0] || states[1] != want[1] || states[2] != want[2] {
		t.Errorf("B got states %v, want %v", states, want)
	}

	time.Sleep(300 * time.Millisecond)
	if got := atA.all(); len(got) != 0 {
		t.Errorf("A heard its own states back: %+v", got)
	}
}

// A member that joins after a breaker opened learns it from the key; a
// breaker that closed again is not replayed.
func TestBreakerLearnedByLateJoiner(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	a := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)

	until := time.Now().Add(10 * time.Second)
	a.PublishBreaker(BreakerState{Upstream: "down.example:443", Settings: "s", State: StateOpen, Until: until})
	a.PublishBreaker(BreakerState{Upstream: "back.example:443", Settings: "s", State: StateOpen, Until: until})
	a.PublishBreaker(BreakerState{Upstream: "back.example:443", Settings: "s", State: StateClosed})
	waitFor(t, time.Second, "queue sent", func() bool {
		a.breakers.mu.Lock()
		defer a.breakers.mu.Unlock()
		return len(a.breakers.queue) == 0
	})
	time.Sleep(50 * time.Millisecond) // the last write is under way once popped

	c := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	var atC recorder[BreakerState]
	defer c.OnBreaker(atC.add)()
	got := atC.find(t, time.Second, "replayed open state at C", func(s BreakerState) bool { return s.Upstream == "down.example:443" })
	if got.State != StateOpen || got.Origin != a.ID() {
		t.Errorf("C got %+v", got)
	}
	if d := got.Until.Sub(until); d < -time.Second || d > time.Second {
		t.Errorf("C's Until is %s off the publisher's", d)
	}
	time.Sleep(2 * receivePoll)
	for _, s := range atC.all() {
		if s.Upstream == "back.example:443" {
			t.Errorf("C was replayed a breaker that closed: %+v", s)
		}
	}
}

// PublishBreaker never waits, even with Redis unreachable, and its
// queue stays bounded, dropping the oldest.
func TestPublishBreakerNeverBlocks(t *testing.T) {
	t.Parallel()
	m, err := newProcess(t).join(Options{URL: "redis://127.0.0.1:" + strconv.Itoa(freePort(t)) + "/0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 2 * breakerQueueSize {
		m.PublishBreaker(BreakerState{Upstream: "u:" + strconv.Itoa(i), State: StateOpen, Until: time.Now().Add(time.Minute)})
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("%d publishes took %s", 2*breakerQueueSize, d)
	}
	m.breakers.mu.Lock()
	n, first := len(m.breakers.queue), m.breakers.queue[0].Upstream
	m.breakers.mu.Unlock()
	if n != breakerQueueSize || first != "u:"+strconv.Itoa(breakerQueueSize) {
		t.Errorf("queue holds %d states from %s, want %d from the newest half", n, first, breakerQueueSize)
	}
	if m.Connected() {
		t.Error("connected to a closed port")
	}
	if _, _, _, err := m.Reserve(context.Background(), "k", Limit{Rate: 1, Burst: 1}, 0); err != ErrNotConnected {
		t.Errorf("Reserve while not connected: %v, want ErrNotConnected", err)
	}
}
