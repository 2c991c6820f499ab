//go:build linux

package fleet_test

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// editConf replaces old by new in the instance's Caddyfile, for the
// next reload to load.
func (g *gateway) editConf(old, new string) {
	g.t.Helper()
	b, err := os.ReadFile(g.conf)
	if err != nil {
		g.t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		g.t.Fatalf("%s's Caddyfile has no %q", g.name, old)
	}
	if err := os.WriteFile(g.conf, []byte(strings.ReplaceAll(string(b), old, new)), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// A reload that changes fleet { timeout } makes the instance a new
// member of its fleet, and the old one closes once its linger ends.
// Everything of the fleet moves to the new member: a breaker made
// before the reload, tripped after the old member closed, is followed
// by the other instance, and an idempotency record written after it is
// seen there too.
func TestGatewayReloadFleetTimeoutMovesMember(t *testing.T) {
	rdb := startRedis(t)
	dead := newUpstream(t, http.StatusServiceUnavailable)
	up := newKeyedUpstream(t, 0)
	fl := startFleet(t, 2, rdb, routes(
		proxyRoute("/dead", dead.addr(), deadBreaker)+
			proxyRoute("/pay", up.addr(), idemOptions(0))))
	a, b := fl.gws[0], fl.gws[1]

	// A's breaker of the dead upstream exists, made by traffic, and is
	// closed; B has one too, to watch through its admin API
	for _, g := range []*gateway{a, b} {
		if r := g.mustGet("/dead"); r.status != http.StatusServiceUnavailable || r.outcome != "upstream_status" {
			t.Fatalf("warm-up on %s: got %d %q, want 503 upstream_status", g.name, r.status, r.outcome)
		}
	}
	if v := a.breaker(dead.addr()); v == nil || v.State != "closed" {
		t.Fatalf("%s's breaker after one failure: %+v, want closed", a.name, v)
	}

	a.editConf("timeout 50ms", "timeout 80ms")
	a.reload()
	reloaded := time.Now()
	// the new member subscribes beside the old, which closes when its
	// linger (5s) ends: A has two subscriptions, then one again
	poll(t, 5*time.Second, a.name+"'s new member subscribes beside its old one", func() bool { return rdb.subscribers(fl.prefix) == 3 })
	poll(t, 15*time.Second, a.name+"'s old member closes", func() bool { return rdb.subscribers(fl.prefix) == 2 })
	t.Logf("%s's old member left the fleet %s after the reload", a.name, time.Since(reloaded).Round(time.Millisecond))
	if d := time.Since(reloaded); d < 4*time.Second {
		t.Fatalf("%s's old member closed %s after the reload, before its linger ended: the test cannot tell old from new", a.name, d)
	}
	fl.waitJoined(5 * time.Second)

	// trip A's breaker: two failures more (the window kept the first)
	sent := dead.count(a.name)
	var tripped time.Time
	for i := 1; ; i++ {
		r := a.mustGet("/dead")
		if r.outcome == "breaker_open" {
			break
		}
		if r.status != http.StatusServiceUnavailable || r.outcome != "upstream_status" {
			t.Fatalf("request %d to %s's dead upstream after the reload: %d %q", i, a.name, r.status, r.outcome)
		}
		if i > 3 {
			t.Fatalf("%s's breaker did not trip after %d failures more", a.name, i)
		}
		tripped = time.Now()
	}
	if n := dead.count(a.name) - sent; n != 2 {
		// a new breaker, made after the reload, follows the new member
		// whatever the reload did
		t.Fatalf("%s's breaker tripped after %d failures more, want 2: the breaker made before the reload is gone (its window ran out), and the test cannot tell", a.name, n)
	}
	poll(t, 2*time.Second, b.name+" follows the trip of "+a.name+"'s breaker", func() bool {
		v := b.breaker(dead.addr())
		return v != nil && v.Fleet != nil && v.Fleet.State == "open" && v.State == "open"
	})
	learned := time.Since(tripped) // from the answer of the failure that tripped it
	if learned > time.Second {
		t.Errorf("%s learned of %s's trip %s after it, want within 1s", b.name, a.name, learned)
	}
	if v := b.breaker(dead.addr()); v.Fleet.Origin != a.instanceID() {
		t.Errorf("%s follows a trip from %q, want %s's (%s)", b.name, v.Fleet.Origin, a.name, a.instanceID())
	}
	bSent := dead.count(b.name)
	if r := b.mustGet("/dead"); r.status != http.StatusServiceUnavailable || r.outcome != "breaker_open" {
		t.Errorf("%s after %s tripped: %d %q, want 503 breaker_open", b.name, a.name, r.status, r.outcome)
	}
	if n := dead.count(b.name) - bSent; n != 0 {
		t.Errorf("%s sent the dead upstream %d requests after %s tripped, want none", b.name, n, a.name)
	}
	t.Logf("%s followed %s's trip %s after it", b.name, a.name, learned.Round(time.Millisecond))

	// the records moved too: one written through A is replayed by B
	const auth, key, body = "Bearer caller-1", "after-reload", `{"amount":100}`
	got := a.post("/pay", auth, key, body)
	if !got.isFirst() {
		t.Fatalf("a keyed POST to %s after the reload: %s", a.name, got)
	}
	if r := b.post("/pay", auth, key, body); !r.isReplay() || r.body != got.body {
		t.Errorf("the repeat to %s of a key %s executed after its reload: %s; want the replay of %s", b.name, a.name, r, got)
	}
	if n := up.executions(auth, key); n != 1 {
		t.Errorf("the upstream executed key %q %d times, want exactly 1", key, n)
	}
}
