package fleet

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Redis killed mid-run: the request path gets an error within the
// timeout and then at once, the member says it is alone (logged,
// counted, gauge 0); Redis started again on the same port: the member
// rejoins by itself, state that Redis lost is restored and replayed, and
// breaker sharing works again. The password is in none of the logs.
func TestRedisKilledAndRestarted(t *testing.T) {
	t.Parallel()
	const password = "s3cret-pw"
	rs := startRedis(t, "--requirepass", password)
	url := "redis://:" + password + "@" + rs.Addr() + "/0"
	prefix := uniquePrefix(t)
	logA, logsA := observed()
	logB, logsB := observed()
	a := join(t, newProcess(t), url, prefix, logA)
	b := join(t, newProcess(t), url, prefix, logB)
	var atB recorder[BreakerState]
	defer b.OnBreaker(atB.add)()
	gauge := connectedGauge.WithLabelValues(a.show, prefix)
	if v := testutil.ToFloat64(gauge); v != 1 {
		t.Errorf("connected gauge %v while connected", v)
	}

	a.PublishBreaker(BreakerState{Upstream: "before.example:443", State: StateOpen, Until: time.Now().Add(30 * time.Second)})
	atB.find(t, time.Second, "open state at B before the kill", func(s BreakerState) bool { return s.Upstream == "before.example:443" })
	time.Sleep(2 * receivePoll) // B's registration replay, which may repeat it, is done
	heardBefore := func() int {
		n := 0
		for _, s := range atB.all() {
			if s.Upstream == "before.example:443" {
				n++
			}
		}
		return n
	}
	n0 := heardBefore()

	errsBefore := testutil.ToFloat64(errorsTotal.WithLabelValues(opReserve)) + testutil.ToFloat64(errorsTotal.WithLabelValues(opPing))
	rs.Kill()
	ctx := context.Background()
	l := Limit{Rate: 100, Burst: 10}
	bound := 10*a.opts.Timeout + 50*time.Millisecond
	start := time.Now()
	_, _, _, err := a.Reserve(ctx, "k", l, 0)
	if d := time.Since(start); err == nil || d > bound {
		t.Fatalf("Reserve with Redis killed: err %v after %s, want an error within %s", err, d, bound)
	}
	waitFor(t, 3*time.Second, "A not connected", func() bool { return !a.Connected() })
	start = time.Now()
	if _, _, _, err := a.Reserve(ctx, "k", l, 0); !errors.Is(err, ErrNotConnected) || time.Since(start) > 5*time.Millisecond {
		t.Errorf("Reserve once known down: %v after %s, want ErrNotConnected at once", err, time.Since(start))
	}
	if v := testutil.ToFloat64(gauge); v != 0 {
		t.Errorf("connected gauge %v while down", v)
	}
	if after := testutil.ToFloat64(errorsTotal.WithLabelValues(opReserve)) + testutil.ToFloat64(errorsTotal.WithLabelValues(opPing)); after <= errsBefore {
		t.Error("errors_total did not count the failures")
	}
	if logsA.FilterMessage("fleet: redis does not answer; acting alone until it does").Len() != 1 {
		t.Errorf("want one warning for going down, got %v", logsA.All())
	}

	rs.Start()
	waitFor(t, 5*time.Second, "A and B reconnected", func() bool { return a.Connected() && b.Connected() })
	if v := testutil.ToFloat64(gauge); v != 1 {
		t.Errorf("connected gauge %v after reconnecting", v)
	}
	if logsA.FilterMessage("fleet: redis answers again; sharing state with the fleet").Len() != 1 {
		t.Errorf("want one warning for coming back, got %v", logsA.All())
	}
	if v := testutil.ToFloat64(transitionsTotal.WithLabelValues(a.show, prefix, "connected")); v != 1 {
		t.Errorf("transitions to connected: %v, want 1", v)
	}

	// Redis came back empty: A restores its open breaker, and B gets it
	// again (from the restore's message or the replay).
	waitFor(t, 3*time.Second, "open state replayed to B after the restart", func() bool { return heardBefore() > n0 })
	a.PublishBreaker(BreakerState{Upstream: "after.example:443", State: StateOpen, Until: time.Now().Add(30 * time.Second)})
	atB.find(t, time.Second, "open state at B after the restart", func(s BreakerState) bool { return s.Upstream == "after.example:443" })
	if _, _, ok, err := a.Reserve(ctx, "k", l, 0); err != nil || !ok {
		t.Errorf("Reserve after the restart: ok %v err %v", ok, err)
	}

	// A member that joins now learns both.
	c := join(t, newProcess(t), url, prefix, nil)
	var atC recorder[BreakerState]
	defer c.OnBreaker(atC.add)()
	atC.find(t, time.Second, "replay at C of the breaker opened before the restart", func(s BreakerState) bool { return s.Upstream == "before.example:443" })
	atC.find(t, time.Second, "replay at C of the breaker opened after it", func(s BreakerState) bool { return s.Upstream == "after.example:443" })

	for name, logs := range map[string]interface{ Len() int }{"A": logsA, "B": logsB} {
		if logs.Len() == 0 {
			t.Errorf("%s logged nothing", name)
		}
	}
	for _, s := range []string{password, "s3cret"} {
		if e := mentions(logsA, s); e != "" {
			t.Errorf("A's log shows the password: %s", e)
		}
		if e := mentions(logsB, s); e != "" {
			t.Errorf("B's log shows the password: %s", e)
		}
	}
	if mentions(logsA, ":xxxxx@") == "" {
		t.Errorf("logs do not name the redacted URL: %v", logsA.All())
	}
}

// A wrong password keeps the member alone, and is not what gets logged.
func TestWrongPasswordNeverLogged(t *testing.T) {
	t.Parallel()
	rs := startRedis(t, "--requirepass", "right-pw")
	log, logs := observed()
	m, err := newProcess(t).join(Options{URL: "redis://:wrong-pw@" + rs.Addr() + "/0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "a warning", func() bool {
		return logs.FilterMessage("fleet: redis does not answer; acting alone until it does").Len() > 0
	})
	if m.Connected() {
		t.Error("connected with a wrong password")
	}
	for _, s := range []string{"wrong-pw", "right-pw"} {
		if e := mentions(logs, s); e != "" {
			t.Errorf("log shows a password: %s", e)
		}
	}
}

// Join does not wait for Redis, even one that never answers.
func TestJoinNeverBlocks(t *testing.T) {
	t.Parallel()
	start := time.Now()
	m, err := newProcess(t).join(Options{URL: "redis://127.0.0.1:" + strconv.Itoa(freePort(t)) + "/0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 20*time.Millisecond {
		t.Errorf("Join took %s", d)
	}
	if m.Connected() || m.Live() != 1 {
		t.Errorf("unreachable Redis: connected %v, live %d", m.Connected(), m.Live())
	}
}

// Live counts the members of a fleet, and one that leaves stops counting
// at once.
func TestLiveCountsMembers(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	a := join(t, newProcess(t), rs.URL(), prefix, nil)
	b := join(t, newProcess(t), rs.URL(), prefix, nil)
	other := join(t, newProcess(t), rs.URL(), prefix+"-other", nil)
	waitFor(t, 3*time.Second, "both members counted", func() bool { return a.Live() == 2 && b.Live() == 2 })
	if other.Live() != 1 {
		t.Errorf("a member of another prefix counts %d", other.Live())
	}
	closeNow(b)
	waitFor(t, 2*heartbeatEvery+time.Second, "one member left", func() bool { return a.Live() == 1 })
}
