package fleet

import (
	"context"
	"testing"
	"time"
)

// An override given to one instance reaches the others, is replayed to
// an instance that joins later, and a reset lifts it everywhere and
// deletes its key.
func TestOverrideSharedReplayedAndReset(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	a := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	b := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	var atA, atB recorder[Override]
	defer a.OnOverride(atA.add)()
	defer b.OnOverride(atB.add)()
	time.Sleep(2 * receivePoll)

	ctx := context.Background()
	until := time.Now().Add(time.Minute)
	if err := a.PublishOverride(ctx, Override{Upstream: "pay.example:443", Mode: ModeForceOpen, Until: until}); err != nil {
		t.Fatal(err)
	}
	if err := a.PublishOverride(ctx, Override{Upstream: "ship.example:443", Mode: ModeForceClose}); err != nil {
		t.Fatal(err)
	}
	got := atB.find(t, time.Second, "force_open at B", func(o Override) bool { return o.Mode == ModeForceOpen })
	if got.Upstream != "pay.example:443" || got.Origin != a.ID() {
		t.Errorf("B got %+v", got)
	}
	if d := got.Until.Sub(until); d < -time.Second || d > time.Second {
		t.Errorf("B's Until is %s off the publisher's", d)
	}
	if got := atB.find(t, time.Second, "force_close at B", func(o Override) bool { return o.Mode == ModeForceClose }); !got.Until.IsZero() {
		t.Errorf("an override until reset arrived with an end: %+v", got)
	}

	// Keys: the timed one expires, the other stays until reset.
	rdb := b.rdb
	if ttl := rdb.PTTL(ctx, a.names.override("pay.example:443")).Val(); ttl < 50*time.Second || ttl > time.Minute {
		t.Errorf("force_open key TTL %s, want about a minute", ttl)
	}
	if ttl := rdb.PTTL(ctx, a.names.override("ship.example:443")).Val(); ttl != -1 {
		t.Errorf("force_close key TTL %s, want none", ttl)
	}

	c := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	var atC recorder[Override]
	defer c.OnOverride(atC.add)()
	atC.find(t, time.Second, "replayed force_open at C", func(o Override) bool { return o.Upstream == "pay.example:443" && o.Mode == ModeForceOpen })
	atC.find(t, time.Second, "replayed force_close at C", func(o Override) bool { return o.Upstream == "ship.example:443" && o.Mode == ModeForceClose })

	if err := a.PublishOverride(ctx, Override{Upstream: "pay.example:443", Mode: ModeReset}); err != nil {
		t.Fatal(err)
	}
	atB.find(t, time.Second, "reset at B", func(o Override) bool { return o.Mode == ModeReset })
	atC.find(t, time.Second, "reset at C", func(o Override) bool { return o.Mode == ModeReset })
	if n := rdb.Exists(ctx, a.names.override("pay.example:443")).Val(); n != 0 {
		t.Error("reset left the override's key")
	}

	d := joinPatient(t, newProcess(t), rs.URL(), prefix, nil)
	var atD recorder[Override]
	defer d.OnOverride(atD.add)()
	atD.find(t, time.Second, "replayed force_close at D", func(o Override) bool { return o.Upstream == "ship.example:443" })
	time.Sleep(2 * receivePoll)
	for _, o := range atD.all() {
		if o.Upstream == "pay.example:443" {
			t.Errorf("D was replayed an override that was reset: %+v", o)
		}
	}
	if got := atA.all(); len(got) != 0 {
		t.Errorf("A heard its own overrides back: %+v", got)
	}
}

// An override cannot wait for Redis: while it is down PublishOverride
// fails at once, and bad overrides are refused before Redis is asked.
func TestPublishOverrideFailsFast(t *testing.T) {
	t.Parallel()
	m, err := newProcess(t).join(Options{URL: "redis://127.0.0.1:1/0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := m.PublishOverride(context.Background(), Override{Upstream: "u:1", Mode: ModeForceOpen}); err != ErrNotConnected {
		t.Errorf("PublishOverride while not connected: %v, want ErrNotConnected", err)
	}
	if d := time.Since(start); d > 20*time.Millisecond {
		t.Errorf("PublishOverride took %s while Redis was known down", d)
	}
	for _, o := range []Override{
		{Mode: ModeForceOpen},
		{Upstream: "u:1", Mode: "open"},
		{Upstream: "u:1", Mode: ModeForceOpen, Until: time.Now().Add(-time.Second)},
	} {
		if err := m.PublishOverride(context.Background(), o); err == nil || err == ErrNotConnected {
			t.Errorf("PublishOverride(%+v) = %v, want a validation error", o, err)
		}
	}
}
