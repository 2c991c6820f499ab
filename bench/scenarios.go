package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/caddy-resilient/resilient/internal/oneexec"
)

// scenario is one benchmark situation: an upstream behaviour, a load,
// and how each setup is configured for it.
type scenario struct {
	ID, Title string
	Setups    []string
	Load      loadSpec
	Warmup    loadSpec // healthy, not counted

	// Faults apply from the start of the measured load.
	Faults faults
	// Outage, when set, closes the upstream's port from Outage[0] to
	// Outage[1] into the run (S2).
	Outage [2]time.Duration
	// Stages, when set, change what the upstream does at these times
	// into the run, in order (S13).
	Stages []stage

	Knobs knobs
	// Resilient is the body of `transport resilient { … }`;
	// ResilientNoBreaker the same for the resilient-nobreaker setup.
	Resilient          string
	ResilientNoBreaker string
	ResilientRateLimit string
	// Variants are the bodies of `transport resilient { … }` of the
	// other resilient setups (resilient-idem, resilient-hedge-p95, …),
	// by setup.
	Variants map[string]string
	// Chaos, when set, makes the upstream a Caddy running this chaos
	// block in front of `respond 200` instead of the harness's own (S8);
	// the upstream's counts then come from chaos's stats.
	Chaos string
	// OpenFor and HalfOpen repeat the breaker settings of Resilient,
	// for the probe count.
	OpenFor  time.Duration
	HalfOpen int

	// Gateways, when set, runs that many proxies of the setup, which the
	// load reaches round robin (S9); their Caddyfile is
	// gatewayCaddyfile's.
	Gateways int

	// Track keeps per-request records at the upstream (all but S0).
	Track bool
	// Diag makes the resilient setups report their outcome and attempts
	// in response headers (all but S0, where it would add cost).
	Diag bool
	// CountRefused counts the connects to the upstream's port while it
	// is closed, which reach no handler (S2).
	CountRefused bool
	// Memory samples the proxy's resident memory through the load, and
	// reads its idempotency gauge at the end (S10m).
	Memory bool
	// WatchBreaker polls the resilient setups' breaker through the admin
	// API during the load, to tell when it was open (S13).
	WatchBreaker bool

	// Family, when set, also selects the scenario (-scenarios S12 runs
	// every S12 scenario).
	Family string
	// Shipping, when set, makes the run S12's: the shipping provider and
	// a Python application instead of the upstream and the load
	// generator.
	Shipping *shippingSpec
	// Example, when set, is the Caddyfile in examples/ and the address of
	// its site that the scenario's Caddy setups run as written;
	// example is that site, loaded before the runs.
	Example [2]string
	example *exampleSite
	// OneExec runs the end-to-end check of internal/oneexec instead of
	// the load generator, for Load.Duration (S10x).
	OneExec bool

	// Rows splits the samples into table rows; nil: one row, the ID.
	Rows func(s *sample) string
	// Doc says how the setups are configured, for RESULTS.md.
	Doc string
}

// runData is what one run hands to the analysis.
type runData struct {
	sc       *scenario
	setup    string
	samples  []sample
	elapsed  time.Duration // how long the load was sent
	start    time.Time
	up       upstreamStats
	tl       timeline
	measured time.Duration // the load's nominal duration
	// overLimit is how many requests a chaos quota answered 429 (S8)
	overLimit int
	// mem is the proxy's memory through the load (S10m)
	mem *memStats
	// open are the spans, since start, in which the breaker was seen
	// open (S13, resilient setups)
	open []span
	// ship is what S12's provider saw, per operation, and ops what the
	// application was told of each
	ship map[string][]shipArrival
	ops  map[string]opRecord
}

// connects counts the connect attempts to the upstream's port from
// from to to: SYNs seen on lo, or else the growth of the kernel's
// failed-connect counter (which counts every program's).
func (r *runData) connects(from, to time.Duration) int {
	if r.tl.synsOK {
		n := 0
		for _, at := range r.tl.syns {
			if at >= from && at < to {
				n++
			}
		}
		return n
	}
	return counterDelta(r.tl.failed, from, to)
}

type counterSample struct {
	At time.Duration // since start
	V  int64
}

// scenarios returns every scenario; quick cuts the durations to 3/8.
func scenarios(quick bool) []*scenario {
	d := func(v time.Duration) time.Duration {
		if quick {
			return v * 3 / 8
		}
		return v
	}
	count := func(n int) int {
		if quick {
			return n * 3 / 8
		}
		return n
	}
	// a short warm-up, so that its successes do not swell the retry
	// budget's window (it counts requests over 10s)
	warm := loadSpec{Rate: 200, Duration: 250 * time.Millisecond, Timeout: 2 * time.Second}
	baseline := []string{setupCaddyHTTP, setupResilient, setupNginx, setupHAProxy}
	retry := knobs{Retry: true}
	const breakerS2S3 = "breaker {\nopen_for 1s\n}"

	scs := []*scenario{
		{
			ID: "S0", Title: "healthy upstream, closed-loop max throughput (64 connections)",
			Setups: baseline,
			Load:   loadSpec{Closed: true, Concurrency: 64, Duration: d(4 * time.Second), Timeout: 5 * time.Second},
			Warmup: loadSpec{Closed: true, Concurrency: 64, Duration: d(time.Second), Timeout: 5 * time.Second},
			Doc: "No retries anywhere; `transport resilient` with an empty block (all defaults). " +
				"No outcome headers, so both Caddy configs do the same work but for the transport.",
		},
		{
			ID: "S1", Title: "10% transient 503 on GET, open loop 1000 req/s",
			Setups: baseline, Track: true, Diag: true,
			Load:   loadSpec{Rate: 1000, Duration: d(4 * time.Second), Timeout: 5 * time.Second},
			Warmup: warm,
			Faults: faults{P503: 0.10},
			Knobs:  retry,
			Doc:    "Baselines retry 503 (3 tries). Resilient: defaults (3 attempts, 25ms-1s backoff, budget 0.2+10/s, breaker on).",
		},
		{
			ID: "S2", Title: "upstream refuses connections for a stretch, then comes back; 200 req/s",
			Setups: baseline, Track: true, Diag: true, CountRefused: true,
			Load:    loadSpec{Rate: 200, Duration: d(5 * time.Second), Timeout: 5 * time.Second},
			Warmup:  warm,
			Outage:  [2]time.Duration{d(500 * time.Millisecond), d(3 * time.Second)},
			Knobs:   retry,
			OpenFor: time.Second, HalfOpen: 3,
			Resilient: breakerS2S3,
			Doc: "Port closed from 0.5s to 3s of the 5s run (times 3/8 with -quick). Baselines retry connect errors (3 tries). " +
				"Resilient: defaults but `breaker { open_for 1s }` so it half-opens within the run. " +
				"Refused connects never reach the upstream's handler: the harness counts the SYNs sent to its port on lo " +
				"(a packet socket; without root, the kernel's Tcp AttemptFails counter, which every program feeds).",
		},
		{
			ID: "S3", Title: "upstream accepts and never answers; 200 req/s",
			Setups: baseline, Track: true, Diag: true,
			Load:    loadSpec{Rate: 200, Duration: d(4 * time.Second), Timeout: 4 * time.Second},
			Warmup:  warm,
			Faults:  faults{Hang: true},
			Knobs:   knobs{Retry: true, Read: 500 * time.Millisecond},
			OpenFor: time.Second, HalfOpen: 3,
			Resilient: "timeouts {\nread 500ms\n}\n" + breakerS2S3,
			Doc: "Every setup waits 500ms for response headers. Baselines retry timeouts (3 tries). " +
				"Resilient: `timeouts { read 500ms }`, `breaker { open_for 1s }`; timeouts are not retried (default `on`).",
		},
		{
			ID: "S4", Title: "slow upstream (200ms), 20 requests in flight offered, 10 connections allowed; 100 req/s",
			Setups: baseline, Track: true, Diag: true,
			Load:      loadSpec{Rate: 100, Duration: d(3 * time.Second), Timeout: 2 * time.Second},
			Warmup:    warm,
			Faults:    faults{Delay: 200 * time.Millisecond},
			Knobs:     knobs{MaxConns: 10, Queue: 100 * time.Millisecond},
			Resilient: "pool {\nmax_conns 10\n}\ntimeouts {\npool 100ms\n}",
			Doc: "No retries. Caddy http: `max_conns_per_host 10` (waits without bound); nginx: `max_conns=10` (no queue, " +
				"fails at once); HAProxy: `maxconn 10` + `timeout queue 100ms`. Resilient: `pool { max_conns 10 }`, `timeouts { pool 100ms }`.",
		},
		{
			ID: "S5", Title: "POST, 5% 503 + 5% reset after the body was read; half with Idempotency-Key; 600 req/s",
			Setups: baseline, Track: true, Diag: true,
			Load:   loadSpec{Rate: 600, Duration: d(4 * time.Second), Timeout: 5 * time.Second, Mix: halfKeyed},
			Warmup: warm,
			Faults: faults{P503: 0.05, PReset: 0.05},
			Knobs:  retry,
			Rows:   keyRows("S5"),
			Doc: "Baselines retry 503 and dropped connections, POST included (nginx `non_idempotent`, Caddy `lb_retry_match` " +
				"on `{rp.status_code}` and `{rp.is_transport_error}`, no `request_buffers`). Resilient: defaults " +
				"(retries POST only with `Idempotency-Key`, or when it never left).",
		},
		{
			ID: "S5h", Title: "S5 hard: POST, 20% 503 + 10% connection closed after the body was read; half with Idempotency-Key; 100 req/s",
			Setups: []string{setupCaddyHTTP, setupResilient, setupResilientNoBudget, setupResilientAttempts, setupNginx, setupHAProxy},
			Track:  true, Diag: true,
			Load:   loadSpec{Rate: 100, Duration: d(15 * time.Second), Timeout: 5 * time.Second, Mix: halfKeyed},
			Warmup: warm,
			Faults: faults{P503: 0.20, PReset: 0.10},
			Knobs:  retry,
			Variants: map[string]string{
				setupResilientNoBudget: "retry {\nbudget off\n}",
				setupResilientAttempts: "retry {\nattempts 4\n}",
			},
			Rows: keyRows("S5h"),
			Doc: "S5's setups and retry configs, with the peers' fault rates of SPEC §1: 1500 requests, of which " +
				"20% of arrivals answer 503 and 10% of POST arrivals have their body read and then the connection " +
				"reset. Resilient: defaults; resilient-nobudget: `retry { budget off }`, so only `attempts` bounds " +
				"the retries of keyed POSTs; resilient-attempts4: `retry { attempts 4 }`. With 28% of tries failing " +
				"(10% reset, then 20% of the rest 503), three tries succeed 1 - 0.28^3 = 97.8% of the time, four 99.4%.",
		},
		{
			ID: "S6", Title: "every request gets 429 with Retry-After: 1 on its first try; 100 req/s",
			Setups: baseline, Track: true, Diag: true,
			Load:   loadSpec{Rate: 100, Duration: d(3 * time.Second), Timeout: 5 * time.Second},
			Warmup: warm,
			Faults: faults{P429: 1, RetryAfter: time.Second},
			Knobs:  knobs{Retry: true, RetryStatus: []int{429, 503}},
			Doc: "Baselines are told to retry 429 (Caddy `lb_retry_match`, nginx `http_429`; HAProxy 2.6 has no 429 in " +
				"`retry-on`, so it passes 429 on). Resilient: defaults (429 retried, Retry-After honoured up to 10s; " +
				"a retry paced by Retry-After is counted by the retry budget but not refused by it).",
		},
		{
			ID: "S7", Title: "upstream failing 100% (503); 200 req/s",
			Setups: []string{setupCaddyHTTP, setupResilient, setupResilientNB, setupNginx, setupHAProxy},
			Track:  true, Diag: true,
			Load:               loadSpec{Rate: 200, Duration: d(3 * time.Second), Timeout: 5 * time.Second},
			Warmup:             warm,
			Faults:             faults{Status: 503},
			Knobs:              retry,
			ResilientNoBreaker: "breaker off",
			Doc: "Baselines retry 503 (3 tries). Resilient: defaults; resilient-nobreaker: `breaker off`, so only the " +
				"retry budget (0.2 + 10/s) bounds the retries.",
		},
		{
			ID: "S8", Title: "provider quota: 50 req/s allowed, 429 with Retry-After: 1 above it; 80 req/s offered",
			Setups:             []string{setupCaddyHTTP, setupResilient, setupResilientRL, setupNginx, setupHAProxy},
			Diag:               true,
			Load:               loadSpec{Rate: 80, Duration: d(20 * time.Second), Timeout: 15 * time.Second},
			Warmup:             loadSpec{Rate: 20, Duration: 250 * time.Millisecond, Timeout: 2 * time.Second},
			Chaos:              "quota 50/s retry_after 1s",
			Knobs:              knobs{Retry: true, RetryStatus: []int{429, 503}},
			ResilientRateLimit: "rate_limit {\nrate 50/s\nburst 1\nmax_wait 1s\n}",
			Doc: "The upstream is `chaos { quota 50/s retry_after 1s }` (fixed one-second windows) in front of " +
				"`respond 200`, in a Caddy of its own. Baselines retry 429 and 503 as in S6. Resilient: defaults " +
				"(429 retried after its Retry-After); resilient-ratelimit: `rate_limit { rate 50/s burst 1 max_wait 1s }` " +
				"(burst 1: the default burst, one second of rate, could put up to twice the rate into one of a " +
				"fixed-window provider's windows). \"above limit\" counts the requests the upstream answered 429.",
		},
		{
			ID: "S9", Title: "three gateways, round robin: a dead provider (503) and a provider quota (50 req/s, 429 with Retry-After: 1 above it); 80 req/s to each",
			Setups:   []string{setupFleet, setupNoFleet},
			Gateways: 3, Track: true, Diag: true,
			Load:               loadSpec{Rate: 160, Duration: d(8 * time.Second), Timeout: 15 * time.Second, Route: s9Route},
			Warmup:             loadSpec{Rate: 20, Duration: 250 * time.Millisecond, Timeout: 2 * time.Second, Route: s9Route},
			Faults:             faults{Status: 503},
			Chaos:              "quota 50/s retry_after 1s",
			Resilient:          breakerS2S3,
			ResilientRateLimit: "rate_limit {\nrate 50/s\nburst 1\nmax_wait 1s\n}",
			OpenFor:            time.Second, HalfOpen: 3,
			Rows: func(s *sample) string {
				if s.Route == deadRoute {
					return "S9 dead"
				}
				return "S9 quota"
			},
			Doc: "Three Caddy processes with `transport resilient`; request i goes to gateway i mod 3, every other one to " +
				"each provider. The dead provider is the harness's upstream answering 503, behind defaults but " +
				"`breaker { open_for 1s }`; the quota is `chaos { quota 50/s retry_after 1s }` in a Caddy of its own, behind " +
				"`rate_limit { rate 50/s burst 1 max_wait 1s }` on each gateway. fleet: both transports of every gateway also " +
				"have `fleet { redis redis://127.0.0.1:<port>/0 prefix bench }`, to a redis-server the harness starts for the " +
				"run (the scenario is skipped without one); no-fleet: the same gateways, each on its own. \"until every gateway " +
				"refused\" counts what reached the dead provider until each gateway had answered breaker_open once.",
		},
		{
			ID: "S10", Title: "client retries: keyed POSTs answered in 0-600ms; the client gives up after 300ms and sends again, same key (4 sends at most); 50 logical req/s",
			Setups: []string{setupCaddyHTTP, setupResilient, setupResilientIdem, setupResilientIdemWait, setupNginx, setupHAProxy},
			Track:  true, Diag: true,
			Load: loadSpec{Rate: 50, Duration: d(20 * time.Second), Timeout: 5 * time.Second,
				Mix:    func(int) class { return classPostKey },
				Resend: &resend{Sends: 4, Timeout: 300 * time.Millisecond, MaxWait: 300 * time.Millisecond}},
			Warmup: warm,
			Faults: faults{DelaySpread: 600 * time.Millisecond},
			Variants: map[string]string{
				setupResilientIdem:     "retry {\nidempotency_header off\n}\nidempotency {\nwait 0\n}",
				setupResilientIdemWait: "retry {\nidempotency_header off\n}\nidempotency {\nwait 1s\n}",
			},
			Doc: "Each logical request is a POST with its own Idempotency-Key and X-Bench-Id; the upstream holds each " +
				"arrival a time drawn uniformly from 0 to 600ms (per arrival, from the repetition's seed). The client " +
				"gives up on a send after 300ms (the first counted from its intended time) or when it fails, and sends " +
				"again at once, same key and body; on a 409 it waits its Retry-After, at most 300ms, and sends again; it " +
				"stops at any other status or after the 4th send. Latency: from the intended time to the last answer " +
				"or giving up. No proxy retries (the baselines as in S0; resilient: defaults). An execution is an " +
				"arrival whose body the upstream read to its end, answered or not; a logical request the upstream " +
				"served had an arrival it answered 2xx; \"answered\" counts 2xx on some send, replays " +
				"(`Idempotent-Replayed: true`) included.",
		},
		{
			ID: "S10m", Title: "idempotency memory: 200 000 keyed POSTs, distinct keys, 1 KiB answers, closed loop (64 connections), max_memory 64MiB",
			Setups: []string{setupResilient, setupResilientIdem},
			Load: loadSpec{Closed: true, Concurrency: 64, Duration: d(2 * time.Minute), Requests: count(200000),
				Timeout: 5 * time.Second, Mix: func(int) class { return classPostKey }},
			Warmup:   loadSpec{Closed: true, Concurrency: 64, Duration: time.Second, Timeout: 5 * time.Second},
			Faults:   faults{BodySize: 1024},
			Memory:   true,
			Variants: map[string]string{setupResilientIdem: "idempotency {\nmax_memory 64MiB\n}"},
			Doc: "The upstream answers every POST at once, 200 with a 1 KiB body. The load stops after 200 000 requests " +
				"(75 000 with -quick) or 2 minutes. The Caddy process's VmRSS (/proc/<pid>/status) is read after the " +
				"warm-up (64 connections, GET, 1s), every second, and after the load; the peak is the kernel's " +
				"high-water mark (VmHWM), which also catches a peak between samples; growth is peak minus before. " +
				"The gauge is caddy_resilient_idempotency_bytes from the admin /metrics after the load. resilient " +
				"(defaults, no idempotency block) is the same load's growth without records.",
		},
		{
			ID: "S10x", Title: "one execution per key, end to end: three gateways in one fleet, keyed POSTs resent through faults, reloads and Redis kills",
			Setups: []string{setupFleet}, Gateways: 3, OneExec: true,
			Load: loadSpec{Duration: d(5 * time.Minute)},
			Doc: "The driver of fleet/gateway_oneexec_test.go (internal/oneexec), run longer (`-duration`, default 5m): 12 clients send " +
				"keyed POSTs (bodies of 0 to 1.5 MiB, four callers, key names shared between callers) through three Caddy processes " +
				"in one fleet and send them again as impatient clients do (after their own timeout of 0.2 to 4s, a 409, a 502/504 " +
				"executed maybe, a refusal; to the same gateway or another; two or three at once; now and then with another body; keys " +
				"seen long before). Each execution meets a fault drawn from the seed: slow past the client's patience and its " +
				"X-Request-Timeout (0.25 to 1.2s) but within complete_within, past complete_within, a reset after reading the body, a cut " +
				"mid-answer; 2xx, 4xx and 5xx answers unique to the execution, and 503, 429, 408, 425. One gateway is reloaded every 45s " +
				"(ttl and max_memory changed, back and forth), redis-server (appendonly) is killed with SIGKILL every 70s from 35s on and " +
				"started again 2s later; 6% of the clients' requests are GETs that the gateway hedges. After the load every logical " +
				"request is sent once more (the final sweep). \"ok\": logical requests that ended with the upstream's answer (first or " +
				"replay); latency from the first send to the last answer; amplification: upstream executions per logical request; " +
				"duplicates: keys executed twice (fleet-wide, or by one instance for the keys under way while an instance acted alone). " +
				"The gateways' transport block (oneexec.Route):\n\n  ```caddyfile\n" + indentBlock(oneexec.Route("127.0.0.1:<upstream port>",
				"fleet {\n\tredis redis://127.0.0.1:<port>/0\n\tprefix s10x\n}", oneexec.DefaultTiming, oneexec.StartLimits)) + "  ```",
		},
		tailScenario("S11", "tail: GET answered in 5ms, but 2% of arrivals held 1s; 200 req/s", 0.02, d(20*time.Second), warm,
			"Each arrival is slow or not by its own draw (per arrival, from the repetition's seed), so a second copy "+
				"of a slow request is usually fast; a slow answer ends when its request's context does (a canceled "+
				"copy frees the upstream) and counts as an arrival all the same. No retries configured: "+
				"caddy-http as in S0; resilient: defaults. Extra attempts: upstream arrivals / requests − 1."),
		tailScenario("S11x", "tail, 10%: GET answered in 5ms, but 10% of arrivals held 1s; 200 req/s", 0.10, d(20*time.Second), warm,
			"S11 with five times the slow answers, to show that the retry budget (default 0.2 + 10/s, which hedges "+
				"pass like retries) holds the hedges to its share: 20% of requests + 10 per second."),
		{
			ID: "S13", Title: "fallback: GETs of 300 targets by 4 callers, 200 req/s, callers' deadline 1s; the provider refuses connections, then answers 503, then hangs, 10s each, then comes back",
			Setups: []string{setupCaddyHTTP, setupResilient, setupResilientFallback, setupNginx},
			Diag:   true, WatchBreaker: true,
			Load: loadSpec{Rate: 200, Duration: d(55 * time.Second), Timeout: 1200 * time.Millisecond,
				Reads: &reads{Targets: 300, Callers: 4, Deadline: time.Second}},
			Warmup: warm,
			Faults: faults{Echo: true},
			Stages: []stage{
				{At: d(15 * time.Second), Name: "refused", Refuse: true},
				{At: d(25 * time.Second), Name: "503", Faults: faults{Status: 503}},
				{At: d(35 * time.Second), Name: "hang", Faults: faults{Hang: true}},
				{At: d(45 * time.Second), Name: "back", Faults: faults{Echo: true}},
			},
			Knobs:     knobs{Read: time.Second, Cache: time.Second},
			Resilient: s13Resilient,
			Variants:  map[string]string{setupResilientFallback: s13Resilient + "\nfallback"},
			Doc: "Request i GETs /items/<t> with `Authorization: Bearer caller-<c>`, t of 300 and c of 4 drawn from the " +
				"repetition's seed (1200 distinct answers; the same requests for every setup), and `X-Request-Timeout: 1`; " +
				"the client gives up 1.2s after the request's intended time. The upstream's 200 names the target, the " +
				"caller and when it was made: the client counts an answer naming another caller as served across scopes " +
				"(and not a success), and the age of what it got is its arrival minus that time, whoever served it. " +
				"From 15s to 45s of the 55s run (times 3/8 with -quick) the upstream's port is closed, then it answers " +
				"503, then it accepts and never answers, 10s each; then it is healthy again. No retries in the " +
				"baselines. caddy-http: `dial_timeout 1s`, `response_header_timeout 1s`. nginx: `proxy_connect_timeout 1s`, " +
				"`proxy_read_timeout 1s` (the callers' deadline, which nginx cannot read per request), " +
				"`proxy_cache_key \"$scheme$proxy_host$request_uri $http_authorization\"`, `proxy_cache_valid 200 1s` " +
				"(answers are fetched again once a second old, so nginx's cache serves them up to 1s old while the " +
				"upstream is healthy), `proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504`, " +
				"`inactive=1h`. resilient: `deadline` (the callers' X-Request-Timeout caps total) and " +
				"`breaker { open_for 1s }` (a fixed period, so that probes go out every second of each stage, those of " +
				"the hanging stage until the deadline); resilient-fallback: the same and `fallback` (defaults: stale 1h, " +
				"scope Host and Authorization). \"breaker open\": the requests intended while the admin API showed the " +
				"breaker open (polled every 10ms, until its open_until), but for those it let through (X-Resilient-Attempts " +
				"above 0: they reached it once the open period was over, as probes). \"with an answer given before\": requests of " +
				"the outage whose target and caller had a 200 from this proxy at least 100ms earlier in the run, the " +
				"most a fallback can serve.",
		},
	}
	scs = append(scs, shippingScenarios(count)...)
	for _, sc := range scs {
		sc.Doc += variantConfigs(sc)
	}
	return scs
}

// s13Resilient is the transport block both resilient setups of S13
// share: the caller's deadline, and a breaker that probes every second.
const s13Resilient = "deadline\nbreaker {\nopen_for 1s\n}"

// tailScenario is S11 with share slow of the upstream's arrivals held 1s
// instead of 5ms: GET at 200 req/s, against the hedge setups.
func tailScenario(id, title string, slow float64, d time.Duration, warm loadSpec, doc string) *scenario {
	return &scenario{
		ID: id, Title: title,
		Setups: []string{setupCaddyHTTP, setupResilient, setupResilientHedgeP95, setupResilientHedge50},
		Track:  true, Diag: true,
		Load:   loadSpec{Rate: 200, Duration: d, Timeout: 5 * time.Second},
		Warmup: warm,
		Faults: faults{Delay: 5 * time.Millisecond, PSlow: slow, Slow: time.Second},
		Variants: map[string]string{
			setupResilientHedgeP95: "hedge {\nafter p95\n}",
			setupResilientHedge50:  "hedge {\nafter 50ms\n}",
		},
		Doc: doc,
	}
}

// halfKeyed makes every other request a POST with Idempotency-Key, the
// others POSTs without (S5).
func halfKeyed(i int) class {
	if i%2 == 0 {
		return classPost
	}
	return classPostKey
}

// keyRows splits S5's samples into a row with Idempotency-Key and one
// without.
func keyRows(id string) func(s *sample) string {
	return func(s *sample) string {
		if s.Class == classPostKey {
			return id + " key"
		}
		return id + " no key"
	}
}

// variantConfigs shows the whole Caddyfile of each setup sc configures
// in Variants, as the harness writes it but for the ports (in full for
// every scenario: a run of one scenario shows no other's).
func variantConfigs(sc *scenario) string {
	var b strings.Builder
	for _, setup := range sc.Setups {
		if _, ok := sc.Variants[setup]; !ok {
			continue
		}
		conf := caddyfile(setup, sc, "127.0.0.1:<port>", "127.0.0.1:<admin port>", "127.0.0.1:<upstream port>")
		fmt.Fprintf(&b, "\n\n  %s:\n\n  ```caddyfile\n", setup)
		for line := range strings.Lines(conf) {
			if strings.TrimSpace(line) == "" {
				b.WriteString("\n")
			} else {
				b.WriteString("  " + line)
			}
		}
		b.WriteString("  ```")
	}
	return b.String()
}

// rowOf names the table row of a sample.
func (sc *scenario) rowOf(s *sample) string {
	if sc.Rows == nil {
		return sc.ID
	}
	return sc.Rows(s)
}

// analyze turns one run into one result per row.
func analyze(r *runData) []*result {
	groups := map[string][]*sample{}
	var order []string
	for i := range r.samples {
		s := &r.samples[i]
		row := r.sc.rowOf(s)
		if _, ok := groups[row]; !ok {
			order = append(order, row)
		}
		groups[row] = append(groups[row], s)
	}
	sort.Strings(order)
	var out []*result
	for _, row := range order {
		out = append(out, analyzeRow(r, row, groups[row], len(order) == 1))
	}
	return out
}

func analyzeRow(r *runData, row string, samples []*sample, whole bool) *result {
	res := &result{Scenario: r.sc.ID, Row: row, Setup: r.setup, Extra: map[string]float64{}, Outcomes: map[string]int{}}
	res.Requests = len(samples)
	lat := make([]time.Duration, 0, len(samples))
	classes := map[class]bool{}
	ids := make(map[string]bool, len(samples))
	for _, s := range samples {
		if s.ok() {
			res.OK++
		}
		lat = append(lat, s.Latency)
		classes[s.Class] = true
		ids[s.ID] = true
		if s.Outcome != "" {
			res.Outcomes[s.Outcome]++
		} else if s.Status == 0 {
			res.Outcomes["client_error"]++
		}
	}
	if res.Requests > 0 {
		res.SuccessPct = 100 * float64(res.OK) / float64(res.Requests)
	}
	res.P50, res.P99, res.P999 = pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999)
	window := r.measured
	if r.sc.Load.Closed {
		window = r.elapsed
	}
	res.RPS = float64(res.OK) / window.Seconds()

	// what the upstream saw of these requests
	posts := classes[classPost] || classes[classPostKey]
	if r.sc.Track {
		for id, as := range r.up.Arrivals {
			if !ids[id] {
				continue
			}
			res.UpstreamRequests += len(as)
			if posts && len(as) > 1 {
				res.Duplicates += len(as) - 1
			}
			for _, a := range as {
				if a.Method == "POST" && !a.BodyOK {
					res.EmptyBodies++
				}
			}
		}
	} else {
		res.UpstreamRequests = int(r.up.Requests)
	}
	if !posts || !r.sc.Track {
		res.Duplicates = -1 // not applicable, or not counted
	}
	if whole && r.sc.CountRefused && r.tl.outage[1] > 0 {
		// refused connects reach no handler, but the upstream's host sees them
		refused := r.connects(r.tl.outage[0], r.tl.outage[1])
		res.Extra["refused_connects"] = float64(refused)
		res.UpstreamRequests += refused
	}
	if res.Requests > 0 {
		res.Amplification = float64(res.UpstreamRequests) / float64(res.Requests)
	}

	switch r.sc.ID {
	case "S2", "S3":
		analyzeBreaker(r, samples, res)
	case "S4":
		analyzePool(r, samples, res)
	case "S6":
		analyzeRetryAfter(r, res)
	case "S8":
		analyzeQuota(r, samples, res)
	case "S9":
		analyzeFleet(r, row, samples, res)
	case "S10":
		analyzeResend(r, samples, res)
	case "S10m":
		analyzeMemory(r, res)
	case "S11", "S11x":
		analyzeTail(r, res)
	case "S13":
		analyzeFallback(r, samples, res)
	}
	if r.sc.Shipping != nil {
		analyzeShipping(r, samples, res)
	}
	return res
}

// analyzeQuota counts what a provider's quota saw (S8): the requests
// above its limit, and the 429s that reached the clients.
func analyzeQuota(r *runData, samples []*sample, res *result) {
	res.Extra["upstream_over_limit"] = float64(r.overLimit)
	n := 0
	for _, s := range samples {
		if s.Status == 429 {
			n++
		}
	}
	res.Extra["client_429"] = float64(n)
}

// analyzeBreaker measures how the breaker behaved once open: the
// latency of the requests it rejected, and what still reached the
// upstream (half-open probes only, if it works).
func analyzeBreaker(r *runData, samples []*sample, res *result) {
	sc := r.sc
	faultEnd := r.measured
	outage := sc.Outage[1] > 0
	if outage {
		faultEnd = r.tl.outage[1]
		// recovery: from the port opening again to the first answer
		rec := time.Duration(-1)
		for _, s := range samples {
			if s.ok() && s.Intended >= faultEnd && (rec < 0 || s.Done-faultEnd < rec) {
				rec = s.Done - faultEnd
			}
		}
		if rec >= 0 {
			res.Extra["recovery_ms"] = ms(rec)
		}
	}
	// the breaker is known open from the first rejection the client saw
	tOpen := time.Duration(-1)
	for _, s := range samples {
		if s.Outcome == "breaker_open" && (tOpen < 0 || s.Done < tOpen) {
			tOpen = s.Done
		}
	}
	// requests sent from then on and rejected with nothing sent; others
	// ending breaker_open were a failed probe, or an attempt before the
	// breaker opened, and waited a backoff before their rejection
	var rejected, lags []time.Duration
	for _, s := range samples {
		if s.Outcome == "breaker_open" && s.Attempts <= 0 && tOpen >= 0 && s.Intended >= tOpen {
			rejected = append(rejected, s.Latency)
			lags = append(lags, s.Lag)
		}
	}
	res.Extra["rejected_lag_p99_ms"] = pct(lags, 0.99)
	res.Extra["rejected_lag_p50_ms"] = pct(lags, 0.5)
	if tOpen < 0 {
		if sc.Diag && strings.HasPrefix(r.setup, "resilient") {
			res.Extra["breaker_opened"] = 0
		}
		return
	}
	res.Extra["breaker_opened"] = 1
	res.Extra["open_at_ms"] = ms(tOpen)
	res.Extra["rejected"] = float64(len(rejected))
	res.Extra["rejected_p99_ms"] = pct(rejected, 0.99)
	res.Extra["rejected_max_ms"] = pct(rejected, 1)

	// what reached the upstream from tOpen to the end of the fault
	probes := 0
	if outage {
		probes = r.connects(tOpen, faultEnd)
	}
	for _, as := range r.up.Arrivals {
		for _, a := range as {
			if at := a.At.Sub(r.start); at >= tOpen && at < faultEnd {
				probes++
			}
		}
	}
	res.Extra["probes"] = float64(probes)
	if span := faultEnd - tOpen; span > 0 {
		periods := math.Ceil(float64(span) / float64(sc.OpenFor))
		res.Extra["probes_allowed"] = periods * float64(sc.HalfOpen)
	}
}

// counterDelta is how much the sampled counter grew from the first
// sample at or after from to the last sample at or before to.
func counterDelta(cs []counterSample, from, to time.Duration) int {
	var a, b *counterSample
	for i := range cs {
		if a == nil && cs[i].At >= from {
			a = &cs[i]
		}
		if cs[i].At <= to {
			b = &cs[i]
		}
	}
	if a == nil || b == nil || b.V < a.V {
		return 0
	}
	return int(b.V - a.V)
}

// analyzePool checks the pool limit: the most requests the upstream
// held at once, and how fast the requests turned away were answered.
func analyzePool(r *runData, samples []*sample, res *result) {
	res.Extra["upstream_max_concurrency"] = float64(r.up.MaxConcurrency)
	var rejected []time.Duration
	for _, s := range samples {
		switch {
		case s.Outcome == "pool_timeout",
			s.Outcome == "" && (s.Status == 502 || s.Status == 503):
			rejected = append(rejected, s.Latency)
		}
	}
	res.Extra["rejected"] = float64(len(rejected))
	if len(rejected) > 0 {
		res.Extra["rejected_p99_ms"] = pct(rejected, 0.99)
		res.Extra["rejected_max_ms"] = pct(rejected, 1)
	}
}

// analyzeRetryAfter checks that no request answered 429 with
// Retry-After came back before that time had passed.
func analyzeRetryAfter(r *runData, res *result) {
	retried, early, fast := 0, 0, 0
	minGap := time.Duration(-1)
	for _, as := range r.up.Arrivals {
		if len(as) < 2 || as[0].Status != 429 {
			continue
		}
		retried++
		gap := as[1].At.Sub(as[0].Done)
		if gap < as[0].RetryAfter {
			early++
		}
		if gap < 100*time.Millisecond {
			fast++
		}
		if minGap < 0 || gap < minGap {
			minGap = gap
		}
	}
	got429 := 0
	for _, as := range r.up.Arrivals {
		if len(as) > 0 && as[0].Status == 429 {
			got429++
		}
	}
	res.Extra["got_429"] = float64(got429)
	res.Extra["retried_429"] = float64(retried)
	res.Extra["retried_early"] = float64(early)
	res.Extra["retried_within_100ms"] = float64(fast)
	if minGap >= 0 {
		res.Extra["min_gap_ms"] = ms(minGap)
	}
}

// pct is the q-quantile of ds in milliseconds (nearest rank); q=1 is
// the maximum.
func pct(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(q*float64(len(s)))) - 1
	k = max(0, min(k, len(s)-1))
	return ms(s[k])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// indentBlock indents every line of b by two spaces, for a code block in
// a markdown list item.
func indentBlock(b string) string {
	var out strings.Builder
	for line := range strings.Lines(b) {
		out.WriteString("  " + line)
	}
	return out.String()
}
