package idempotency

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-resilient/resilient/internal/redistest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// instance is one gateway process of a fleet test: its own Memory and
// its own connection to the shared Redis.
type instance struct {
	Store
	mem    *Memory
	remote *redisRemote
	logs   *observer.ObservedLogs
}

func newInstance(t *testing.T, rs *redistest.Server, prefix string) *instance {
	core, logs := observer.New(zapcore.InfoLevel)
	mem := newTestMemory(t, Config{})
	r := newRemote(t, rs, prefix)
	return &instance{Store: NewFleet(mem, r, zap.New(core)), mem: mem, remote: r, logs: logs}
}

// twoInstances starts a redis-server and two instances sharing it.
func twoInstances(t *testing.T) (rs *redistest.Server, a, b *instance) {
	t.Helper()
	rs = redistest.Start(t)
	prefix := "test-" + strings.ReplaceAll(t.Name(), "/", "-")
	return rs, newInstance(t, rs, prefix), newInstance(t, rs, prefix)
}

// raw returns a client of the test's own to the server.
func raw(t *testing.T, rs *redistest.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: rs.Addr(), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

// A repeat on the other instance while the first is in flight: InFlight,
// and the other instance keeps no record of it.
func TestFleetInFlightElsewhere(t *testing.T) {
	t.Parallel()
	_, a, b := twoInstances(t)
	k := NewKey([]string{"h"}, "k")
	first := begin(t, a, k, New, nil)
	var calls atomic.Int32
	begin(t, b, k, InFlight, fpOf(fpA, &calls))
	if n, _ := b.mem.Len(); n != 0 || calls.Load() != 0 {
		t.Errorf("b holds %d records, read the body %d times", n, calls.Load())
	}
	first.Claim.Release()
}

// After Keep, the other instance replays the answer as it was given; a
// request with another fingerprint gets Mismatch; an answer not kept
// whole is Used there too.
func TestFleetReplayElsewhere(t *testing.T) {
	t.Parallel()
	_, a, b := twoInstances(t)
	k, big := NewKey(nil, "k"), NewKey(nil, "big")
	want := answer(201, `{"id":"ch_1"}`)
	want.Header.Add("Set-Cookie", "a=1")
	want.Header.Add("Set-Cookie", "b=2")
	begin(t, a, k, New, nil).Claim.Keep(fpA, want)

	var calls atomic.Int32
	r := begin(t, b, k, Replay, fpOf(fpA, &calls))
	got := r.Answer
	if got.Status != 201 || string(got.Body) != `{"id":"ch_1"}` || !got.Whole || got.Outcome != "" ||
		strings.Join(got.Header.Values("Set-Cookie"), ",") != "a=1,b=2" || got.Header.Get("X-Charge") != "ch_1" || len(got.Header) != len(want.Header) {
		t.Errorf("replayed %+v, want %+v", got, want)
	}
	if calls.Load() != 1 {
		t.Errorf("body read %d times", calls.Load())
	}
	begin(t, b, k, Mismatch, fpOf(fpB, nil))

	partial := answer(200, "cut")
	partial.Whole = false
	begin(t, a, big, New, nil).Claim.Keep(fpA, partial)
	if r := begin(t, b, big, Used, fpOf(fpA, nil)); r.Answer.Status != 200 || r.Answer.Body != nil {
		t.Errorf("used: %+v", r.Answer)
	}

	outcome := Answer{Status: 504, Outcome: "read_timeout", Whole: true}
	kt := NewKey(nil, "timed out")
	begin(t, a, kt, New, nil).Claim.Keep(fpA, outcome)
	if r := begin(t, b, kt, Replay, fpOf(fpA, nil)); r.Answer.Status != 504 || r.Answer.Outcome != "read_timeout" {
		t.Errorf("outcome replayed as %+v", r.Answer)
	}
}

// Release frees the key on every instance.
func TestFleetRelease(t *testing.T) {
	t.Parallel()
	rs, a, b := twoInstances(t)
	k := NewKey(nil, "k")
	begin(t, a, k, New, nil).Claim.Release()
	if n, err := raw(t, rs).Exists(bg, a.remote.Key("idem:"+k.String())).Result(); err != nil || n != 0 {
		t.Errorf("after Release the record is in Redis: %d, %v", n, err)
	}
	begin(t, b, k, New, nil).Claim.Keep(fpA, answer(200, "from b"))
	if r := begin(t, a, k, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "from b" {
		t.Errorf("a replays %q", r.Answer.Body)
	}
}

// A repeat on the same instance is caught there, without asking Redis.
func TestFleetSameInstanceNeedsNoRedis(t *testing.T) {
	t.Parallel()
	_, a, _ := twoInstances(t)
	k := NewKey(nil, "k")
	calls := a.remote.calls.Load()
	first := begin(t, a, k, New, nil)
	begin(t, a, k, InFlight, nil)
	first.Claim.Keep(fpA, answer(200, "ok"))
	begin(t, a, k, Replay, fpOf(fpA, nil))
	if n := a.remote.calls.Load() - calls; n != 2 {
		t.Errorf("%d calls to Redis for a claim, a repeat in flight, a keep and a replay; want 2 (claim and keep)", n)
	}
}

// A repeat on another instance that may wait polls Redis, and gets the
// replay soon after the first is kept, or the key when it is released.
func TestFleetWaitAcrossInstances(t *testing.T) {
	t.Parallel()
	_, a, b := twoInstances(t)
	k := NewKey(nil, "k")
	first := begin(t, a, k, New, nil)
	ch := beginAsync(bg, b, k, 10*time.Second, fpA)
	expectNothing(t, ch, 100*time.Millisecond, "the repeat on b")
	kept := time.Now()
	first.Claim.Keep(fpA, answer(200, "ok"))
	o := receive(t, ch, 2*time.Second, "the repeat on b")
	if o.err != nil || o.r.Verdict != Replay || string(o.r.Answer.Body) != "ok" {
		t.Fatalf("b got %s %+v, %v", o.r.Verdict, o.r.Answer, o.err)
	}
	if d := o.at.Sub(kept); d > 4*pollEvery+testTimeout {
		t.Errorf("replay came %s after Keep", d)
	}

	k2 := NewKey(nil, "k2")
	first = begin(t, a, k2, New, nil)
	ch = beginAsync(bg, b, k2, 10*time.Second, fpA)
	expectNothing(t, ch, 60*time.Millisecond, "the repeat on b")
	first.Claim.Release()
	if o := receive(t, ch, 2*time.Second, "the repeat on b"); o.err != nil || o.r.Verdict != New {
		t.Fatalf("b got %s, %v after a released; want new", o.r.Verdict, o.err)
	} else {
		begin(t, a, k2, InFlight, nil) // b's claim holds in Redis
		o.r.Claim.Release()
	}

	k3 := NewKey(nil, "k3")
	first = begin(t, a, k3, New, nil)
	start := time.Now()
	r, err := b.Begin(bg, k3, Params{Wait: 120 * time.Millisecond}, fpOf(fpA, nil))
	if d := time.Since(start); err != nil || r.Verdict != InFlight || d < 120*time.Millisecond || d > time.Second {
		t.Errorf("wait running out: %s, %v after %s", r.Verdict, err, d)
	}
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	if r, err := b.Begin(ctx, k3, Params{Wait: 10 * time.Second}, fpOf(fpA, nil)); err != context.DeadlineExceeded {
		t.Errorf("wait past ctx: %s, %v; want ctx's error", r.Verdict, err)
	}
	if n, _ := b.mem.Len(); n != 0 {
		t.Errorf("b keeps %d records of keys it never claimed", n)
	}
	first.Claim.Release()
}

// withLease makes in's claims in Redis last lease, renewed every third
// of it; before its first Begin.
func withLease(in *instance, lease time.Duration) *instance {
	in.Store.(*fleetStore).leases.lease = lease
	return in
}

// stopRenewing stops renewing a claim's lease without ending it: what
// the other instances see of an instance that died with the key.
func stopRenewing(in *instance, c Claim) {
	in.Store.(*fleetStore).leases.letGo(c.(*fleetClaim))
}

// A claim in Redis lasts as long as its request, however long that is:
// its short lease is renewed meanwhile; a record whose lease ran out
// while Redis was away is held again, as nobody claimed it since; a
// record another claim took over is no longer renewed nor overwritten;
// and once the claim ends no renewal brings its record back.
func TestFleetLeaseRenewedWhileTheRequestLives(t *testing.T) {
	t.Parallel()
	rs, a, b := twoInstances(t)
	const lease = 400 * time.Millisecond
	withLease(a, lease)
	c := raw(t, rs)
	k := NewKey(nil, "k")
	name := a.remote.Key("idem:" + k.String())
	first := begin(t, a, k, New, nil)
	time.Sleep(4 * lease)
	begin(t, b, k, InFlight, nil)
	if ttl, err := c.PTTL(bg, name).Result(); err != nil || ttl <= 0 || ttl > lease {
		t.Errorf("the claim's lease: %v, %v", ttl, err)
	}

	mine, err := c.Get(bg, name).Result()
	if err != nil {
		t.Fatal(err)
	}
	c.Del(bg, name) // its lease ran out while Redis was away
	waitFor(t, 2*lease, "the claim held again", func() bool { v, _ := c.Get(bg, name).Result(); return v == mine })
	begin(t, b, k, InFlight, nil)
	first.Claim.Keep(fpA, answer(200, "after an hour"))
	if r := begin(t, b, k, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "after an hour" {
		t.Errorf("replayed %q", r.Answer.Body)
	}

	k2 := NewKey(nil, "k2")
	name2 := a.remote.Key("idem:" + k2.String())
	second := begin(t, a, k2, New, nil)
	other := flightValue([tokenLen]byte{9})
	c.Set(bg, name2, other, time.Minute) // another instance took it over
	time.Sleep(lease)
	if v, _ := c.Get(bg, name2).Result(); v != other {
		t.Errorf("a renewal overwrote another's claim: %q", v)
	}
	a.Store.(*fleetStore).leases.mu.Lock()
	renewed := len(a.Store.(*fleetStore).leases.held)
	a.Store.(*fleetStore).leases.mu.Unlock()
	if renewed != 0 {
		t.Errorf("%d claims still renewed, want none: the only one is another's now", renewed)
	}
	second.Claim.Keep(fpA, answer(200, "mine"))
	if v, _ := c.Get(bg, name2).Result(); v != other {
		t.Errorf("a late Keep overwrote another's claim: %q", v)
	}

	k3 := NewKey(nil, "k3")
	begin(t, a, k3, New, nil).Claim.Release()
	time.Sleep(lease)
	begin(t, b, k3, New, nil).Claim.Release() // no renewal brought it back
}

// An instance that dies with a key holds it in Redis for one lease; then
// another instance may claim it, and the dead one's late Keep or Release
// leaves that claim alone. A late Keep is still shared while nobody
// claimed the key since.
func TestFleetLeaseOfADeadInstance(t *testing.T) {
	t.Parallel()
	rs, a, b := twoInstances(t)
	withLease(a, 100*time.Millisecond)
	c := newInstance(t, rs, a.remote.prefix)
	k := NewKey(nil, "k")
	stuck := begin(t, a, k, New, nil)
	stopRenewing(a, stuck.Claim)
	begin(t, b, k, InFlight, nil)
	time.Sleep(150 * time.Millisecond)
	next := begin(t, b, k, New, nil)
	stuck.Claim.Keep(fpB, answer(500, "late"))
	begin(t, c, k, InFlight, nil) // the late Keep left b's claim alone
	next.Claim.Keep(fpA, answer(200, "ok"))
	if r := begin(t, c, k, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "ok" {
		t.Errorf("replayed %q", r.Answer.Body)
	}

	k2 := NewKey(nil, "k2")
	late := begin(t, a, k2, New, nil)
	stopRenewing(a, late.Claim)
	time.Sleep(150 * time.Millisecond)
	late.Claim.Keep(fpA, answer(200, "late but shared"))
	if r := begin(t, b, k2, Replay, fpOf(fpA, nil)); string(r.Answer.Body) != "late but shared" {
		t.Errorf("replayed %q", r.Answer.Body)
	}

	k3 := NewKey(nil, "k3")
	gone := begin(t, a, k3, New, nil)
	stopRenewing(a, gone.Claim)
	time.Sleep(150 * time.Millisecond)
	taken := begin(t, b, k3, New, nil)
	gone.Claim.Release()
	begin(t, c, k3, InFlight, nil)
	taken.Claim.Release()
	begin(t, c, k3, New, nil).Claim.Release()
}
