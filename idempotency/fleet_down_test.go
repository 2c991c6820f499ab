package idempotency

import (
	"encoding/binary"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-resilient/resilient/fleet"
	"github.com/caddy-resilient/resilient/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest/observer"
)

const (
	msgLocal  = "idempotency: the fleet's redis does not answer; repeats are caught on this instance only until it does"
	msgShared = "idempotency: the fleet's redis answers again; repeats are caught on every instance"
	msgBad    = "idempotency: a record in the fleet's redis does not decode; its key is taken for used (409) until the record expires"
)

// within fails t if f takes longer than d.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	if took := time.Since(start); took > d {
		t.Errorf("%s took %s, want at most %s", what, took, d)
	}
}

func count(logs *observer.ObservedLogs, msg string) int { return logs.FilterMessage(msg).Len() }

// Redis killed: every step goes on locally within about the timeout, a
// repeat on the same instance is still caught, the failures are counted
// and the change is logged once. Redis restarted: sharing resumes by
// itself, logged once.
func TestFleetRedisKilledAndRestarted(t *testing.T) {
	t.Parallel()
	rs, a, b := twoInstances(t)
	before := NewKey(nil, "before")
	begin(t, a, before, New, nil).Claim.Keep(fpA, answer(200, "before"))
	begin(t, b, before, Replay, fpOf(fpA, nil))

	// A repeat polling for a first on another instance when Redis goes:
	// that first was under way at the last look, so it is not sent.
	flying := NewKey(nil, "flying")
	held := begin(t, a, flying, New, nil)
	polling := beginAsync(bg, b, flying, 10*time.Second, fpA)
	expectNothing(t, polling, 3*pollEvery, "the repeat polling on b")

	rs.Kill()
	bound := testTimeout + 150*time.Millisecond
	if o := receive(t, polling, bound+pollEvery, "the repeat polling on b"); o.err != nil || o.r.Verdict != InFlight {
		t.Errorf("polling repeat with Redis killed: %s, %v; want in_flight", o.r.Verdict, o.err)
	}
	within(t, bound, "Release with Redis killed", held.Claim.Release)
	k := NewKey(nil, "during")
	var first Result
	within(t, bound, "Begin with Redis killed", func() { first = begin(t, a, k, New, nil) })
	within(t, bound, "a repeat on the same instance", func() { begin(t, a, k, InFlight, nil) })
	within(t, bound, "Keep", func() { first.Claim.Keep(fpA, answer(200, "during")) })
	within(t, bound, "a replay on the same instance", func() { begin(t, a, k, Replay, fpOf(fpA, nil)) })
	within(t, bound, "a replay of a record kept before", func() { begin(t, a, before, Replay, fpOf(fpA, nil)) })
	var other Result
	within(t, bound, "Begin on the other instance", func() { other = begin(t, b, k, New, nil) }) // cross-instance dedup pauses
	within(t, bound, "Release", func() { other.Claim.Release() })
	if a.remote.failed.Load() == 0 || b.remote.failed.Load() == 0 {
		t.Errorf("failures counted: a %d, b %d", a.remote.failed.Load(), b.remote.failed.Load())
	}
	if n := count(a.logs, msgLocal); n != 1 {
		t.Errorf("a logged going local %d times, want once", n)
	}

	rs.Start()
	i := 0
	waitFor(t, 3*time.Second, "sharing again", func() bool {
		i++
		k := NewKey(nil, "after-"+strconv.Itoa(i))
		ra, err := a.Begin(bg, k, Params{}, nil)
		if err != nil || ra.Verdict != New {
			t.Fatal(ra, err)
		}
		defer ra.Claim.Release()
		rb, err := b.Begin(bg, k, Params{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rb.Verdict == New {
			rb.Claim.Release()
		}
		return rb.Verdict == InFlight
	})
	k = NewKey(nil, "after")
	begin(t, a, k, New, nil).Claim.Keep(fpA, answer(200, "after"))
	if r := begin(t, b, k, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "after" {
		t.Errorf("b replays %q", r.Answer.Body)
	}
	if l, s := count(a.logs, msgLocal), count(a.logs, msgShared); l != 1 || s != 1 {
		t.Errorf("a logged going local %d times and shared again %d times, want once each", l, s)
	}
}

// A value under a record's key that does not decode (garbage, cut short,
// a status out of range, another format version, trailing bytes) is
// never replayed, never panics and never lets the request through: the
// key is taken for used, on every instance; the value is left alone, the
// error is counted without taking Redis for down, and the warning is
// not repeated per request.
func TestFleetGarbageRecord(t *testing.T) {
	t.Parallel()
	rs, a, b := twoInstances(t)
	c := raw(t, rs)
	valid := answer(200, "valid")
	record := string(encodeRecord(fpA, valid))
	status700 := []byte(record)
	binary.BigEndian.PutUint16(status700[2+len(Fingerprint{}):], 700)
	for i, garbage := range []string{"garbage", "", record[:len(record)-1], string(status700), "\x02" + record[1:], record + "x"} {
		k := NewKey(nil, "k"+strconv.Itoa(i))
		name := a.remote.Key("idem:" + k.String())
		if err := c.Set(bg, name, garbage, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		failed := a.remote.failed.Load()
		var calls atomic.Int32
		if r := begin(t, a, k, Used, fpOf(fpA, &calls)); r.Answer != nil || calls.Load() != 0 {
			t.Errorf("garbage %d: used with answer %+v, body read %d times", i, r.Answer, calls.Load())
		}
		if a.remote.failed.Load() != failed+1 || a.remote.down {
			t.Errorf("garbage %d: %d failures counted, down %v; want 1, false", i, a.remote.failed.Load()-failed, a.remote.down)
		}
		begin(t, a, k, Used, fpOf(fpA, nil)) // the local claim was let go: asked again, same answer
		begin(t, b, k, Used, fpOf(fpA, nil))
		if n, _ := a.mem.Len(); n != 0 {
			t.Errorf("garbage %d: a holds %d records", i, n)
		}
		if v, err := c.Get(bg, name).Result(); err != nil || v != garbage {
			t.Errorf("garbage %d: the value became %q, %v", i, v, err)
		}
	}
	if n := count(a.logs, msgBad); n != 1 {
		t.Errorf("%d warnings about undecodable records, want 1", n)
	}
	if n := count(a.logs, msgLocal); n != 0 {
		t.Errorf("garbage taken for Redis down: %v", a.logs.All())
	}
	k := NewKey(nil, "fine")
	first := begin(t, a, k, New, nil)
	begin(t, b, k, InFlight, nil)
	first.Claim.Release()
}

// fleetErrors returns caddy_resilient_fleet_errors_total{op="idempotency"}.
func fleetErrors(t *testing.T) float64 {
	reg := prometheus.NewRegistry()
	reg.MustRegister(fleet.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "caddy_resilient_fleet_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == opName {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A real *fleet.Member shares records with another instance, counts
// what fails under op idempotency, and once Redis is down lets Begin go
// on locally at once, counting each such Begin too.
func TestFleetMember(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	prefix := "test-" + t.Name()
	m, err := fleet.Join(fleet.Options{URL: rs.URL(), Prefix: prefix}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Release)
	waitFor(t, 3*time.Second, "member connected", m.Connected)
	a := NewFleet(newTestMemory(t, Config{}), m, nil)
	b := newInstance(t, rs, prefix)

	k := NewKey(nil, "k")
	first := begin(t, a, k, New, nil)
	begin(t, b, k, InFlight, nil)
	first.Claim.Keep(fpA, answer(200, "from a"))
	if r := begin(t, b, k, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "from a" {
		t.Errorf("b replays %q", r.Answer.Body)
	}
	k2 := NewKey(nil, "k2")
	first = begin(t, b, k2, New, nil)
	begin(t, a, k2, InFlight, nil)
	first.Claim.Keep(fpA, answer(200, "from b"))
	if r := begin(t, a, k2, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "from b" {
		t.Errorf("a replays %q", r.Answer.Body)
	}

	errs := fleetErrors(t)
	k3 := NewKey(nil, "k3")
	if err := raw(t, rs).Set(bg, m.Key("idem:"+k3.String()), "garbage", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	begin(t, a, k3, Used, nil)
	if got := fleetErrors(t); got != errs+1 || !m.Connected() {
		t.Errorf("garbage: errors_total went %v -> %v, connected %v; want +1 and still connected", errs, got, m.Connected())
	}

	rs.Kill()
	var r Result
	within(t, fleet.DefaultTimeout+150*time.Millisecond, "Begin with Redis killed", func() { r = begin(t, a, NewKey(nil, "k4"), New, nil) })
	within(t, fleet.DefaultTimeout+150*time.Millisecond, "Keep with Redis killed", func() { r.Claim.Keep(fpA, answer(200, "ok")) })
	waitFor(t, 3*time.Second, "member down", func() bool { return !m.Connected() })
	paused := fleetErrors(t)
	within(t, 5*time.Millisecond, "Begin with Redis known down", func() { begin(t, a, NewKey(nil, "k5"), New, nil).Claim.Release() })
	if got := fleetErrors(t); got != paused+1 {
		t.Errorf("a Begin that went on alone while Redis was known down: errors_total went %v -> %v, want +1", paused, got)
	}
	begin(t, a, NewKey(nil, "k4"), Replay, fpOf(fpA, nil))
	if got := fleetErrors(t); got <= errs+1 {
		t.Errorf("errors_total %v: the failures with Redis killed were not counted", got)
	}
}
