//go:build linux

package fleet_test

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-resilient/resilient/internal/oneexec"
)

// oneExecSeed is the seed of the CI run; the bench's S10x runs the same
// driver longer, with seeds of its own (-seed).
const oneExecSeed = 20261207

// One execution per key, end to end (SPEC §13, "Proven, not assumed"):
// three real Caddy processes in one fleet, sharing a real redis-server,
// in front of a loopback upstream that records every execution. Twelve
// clients send keyed POSTs for 20 seconds (bodies of 0 to 1.5 MiB, keys
// of four callers, some key names shared between callers) and send them
// again the way impatient clients do: after their own timeout, a 409, a
// 502/504 that may have been executed, a refusal; at once or later, to
// the same instance or another, two or three at once, quoted or not,
// now and then with another body, and keys seen long before. Every
// execution meets a fault drawn from the seed (oneexec.Upstream): an
// answer at once, slow (past the client's patience and the caller's
// X-Request-Timeout, within complete_within, so the carry runs), past
// complete_within, a reset after reading the body, a cut mid-answer;
// statuses 2xx, 4xx and 5xx with bodies unique to the execution, and
// 503, 429, 408, 425 that say it did nothing. The gateways' config
// invites duplicates (POST among retry's methods, every failure and
// timeouts retried, GETs hedged after 25ms); meanwhile instance b is
// reloaded with another ttl and max_memory, Redis is killed (SIGKILL)
// and started again, and instance c is reloaded. After the load every
// logical request is sent once more to an instance drawn from the seed
// (the final sweep), and oneexec checks:
//
//   - per key (caller and key), at most one execution that may have
//     acted: every execution counts, but one that delivered 408, 425,
//     429 or 503; a read-then-reset, a cut, an answer its gateway
//     abandoned all count;
//   - every upstream answer a client got, first or replay, is byte for
//     byte the answer of the execution it names (status, every header
//     the upstream set, body), an execution of the same key and the
//     same request body; a first answer is its own request's, a replay
//     another's that acted and could be kept;
//   - the gateway's own answers are ones it could give (409 without
//     Retry-After only after an answer past max_response or cut, 422
//     only after another body executed, a replayed 502/504 only after
//     no answer, executed "no" only when nothing of that request acted),
//     and no keyed request reached the upstream twice at once (hedged)
//     or again after acting (retried).
//
// Where the README lets a repeat on another instance through (while
// Redis does not answer, cross-instance deduplication pauses: each
// instance catches repeats on itself only, and the records it keeps
// meanwhile stay its own), the first bound is per instance: a key is
// held to one acting execution per instance, instead of one in all,
// when one of its executions at the upstream (until 1 s after its end,
// while its answer goes into the records), or the client request that
// execution came from, was under way at some moment of a window in
// which an instance acted alone, widened by 1 s on each side: from the
// SIGKILL until every instance reported itself back in the fleet, and
// from an instance's log line saying the fleet's Redis does not answer
// to the next saying it does again (a Redis operation past the fleet's
// 50ms timeout on a busy machine opens one too). A key whose requests
// in a window were all answered from records (replays, 409s) is held to
// one in all. Every other check holds for every key. Redis runs with
// appendonly, so that its restart keeps what it acknowledged (it writes
// the file before it answers): a Redis that comes back empty has
// forgotten the records kept before, which only the instances that
// kept them still catch.
//
// The test also fails when the run proves little: each path above
// (replays across instances, a carried answer replayed, a replayed
// no-answer, 409s, 422, a hedged GET, a key exempted by the outage, a
// replay from an instance's own records while Redis was down) must have
// happened at least once.
func TestGatewayOneExecutionPerKey(t *testing.T) {
	rdb := startRedis(t, "--appendonly", "yes", "--appendfsync", "no")
	timing := oneexec.DefaultTiming
	up, err := oneexec.NewUpstream(oneExecSeed, timing)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	fl := startFleet(t, 3, rdb, routes(oneexec.Route(up.Addr(), "%[1]s", timing, oneexec.StartLimits)))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	var gws []oneexec.Gateway
	for _, g := range fl.gws {
		gws = append(gws, oneexec.Gateway{Name: g.name, Addr: g.http, Admin: g.admin, Log: g.logPath})
	}
	reload := func(g *gateway) func() error {
		return func() error {
			g.editConf("ttl "+oneexec.StartLimits.TTL, "ttl "+oneexec.ReloadLimits.TTL)
			g.editConf("max_memory "+oneexec.StartLimits.MaxMemory, "max_memory "+oneexec.ReloadLimits.MaxMemory)
			g.reload()
			return nil
		}
	}
	const load = 20 * time.Second
	cfg := oneexec.Config{
		Seed: oneExecSeed, Duration: load, Clients: 12, Gateways: gws, Upstream: up, Timing: timing,
		Events: []oneexec.Event{
			{At: 5 * time.Second, Name: "reload " + b.name + " (ttl, max_memory)", Do: reload(b)},
			{At: 10 * time.Second, Name: "redis-server SIGKILL", Down: true, Do: func() error { rdb.kill(); return nil }},
			{At: 11500 * time.Millisecond, Name: "redis-server started again", Up: true, Do: func() error {
				rdb.start()
				fl.waitJoined(10 * time.Second)
				return nil
			}},
			{At: 15 * time.Second, Name: "reload " + c.name + " (ttl, max_memory)", Do: reload(c)},
		},
		Logf: t.Logf,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := oneexec.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %d:\n%s", oneExecSeed, rep.Summary())
	for i, v := range rep.Violations {
		if i == 40 {
			t.Errorf("... and %d more", len(rep.Violations)-i)
			break
		}
		t.Errorf("%s", v)
	}

	// the run proves what it claims only if every path happened
	for _, c := range []struct {
		n    int
		what string
	}{
		{rep.KeysExecuted, "keys executed"},
		{rep.ReplaysIdentical, "replays"},
		{rep.ReplaysCrossInstance, "replays of another instance's execution"},
		{rep.ReplaysOfCarried, "replays of an answer carried past its client"},
		{rep.NoAnswerReplays, "replayed no-answers (reset, hang)"},
		{rep.InFlight409, "409 while the first was in flight"},
		{rep.Used409, "409 for an answer too large to keep"},
		{rep.Mismatch422, "422 for another body"},
		{rep.MaybeFirsts, "502/504 executed maybe"},
		{rep.SweepReplays, "replays to the final sweep"},
		{rep.ReplaysOwnInWindow, "replays from an instance's own records while Redis was down"},
		{rep.HedgedGets, "hedged GETs (the hedge block is live)"},
		{rep.ExemptKeys, "keys under way while Redis was down"},
	} {
		if c.n == 0 {
			t.Errorf("the run had no %s: it proves less than it claims", c.what)
		}
	}
	if rep.Logical < 200 {
		t.Errorf("only %d logical requests in %s: the run proves little", rep.Logical, load)
	}
	// no record was dropped for room: the stores stayed well under the
	// smaller max_memory
	for _, g := range []*gateway{a, b, c} {
		if n := rep.Gauges[g.name]["caddy_resilient_idempotency_bytes"]; n <= 0 || n > 256<<20 {
			t.Errorf("%s kept %.0f bytes of answers at the end: want some, and well under max_memory %s", g.name, n, oneexec.ReloadLimits.MaxMemory)
		}
	}
}
