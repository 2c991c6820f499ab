package integration

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Provider quotas (SPEC §3 rate_limit, §4 step 3a): every attempt takes a
// token, so the upstream never sees more than the rate.

// arrivals is an upstream handler that notes when each request came,
// and answers from a script.
type arrivals struct {
	mu  sync.Mutex
	at  []time.Time
	hdr []http.Header
}

func (a *arrivals) note(r *http.Request) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.at = append(a.at, time.Now())
	a.hdr = append(a.hdr, r.Header.Clone())
	return len(a.at)
}

func (a *arrivals) times() []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Time(nil), a.at...)
}

// countingUpstream starts an upstream that notes every arrival and
// answers 200.
func countingUpstream(t *testing.T) (*arrivals, *upstream) {
	a := new(arrivals)
	return a, startUpstream(t, func(w http.ResponseWriter, r *http.Request) { a.note(r) })
}

// rateLimited loads a gateway to up whose transport has the given
// rate_limit block body.
func rateLimited(t *testing.T, up *upstream, block string) *gateway {
	return loadGateway(t, proxySite(up.addr, "transport resilient {\n\t\t\trate_limit {\n"+block+"\n\t\t\t}\n\t\t}"))
}

// maxInWindow is the most arrivals within any span of length w.
func maxInWindow(at []time.Time, w time.Duration) int {
	best := 0
	for i := range at {
		n := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < w; j++ {
			n++
		}
		best = max(best, n)
	}
	return best
}

// concurrently sends n GETs at once and returns their statuses.
func concurrently(t *testing.T, g *gateway, n int, header ...string) []int {
	t.Helper()
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/", nil)
			for k := 0; k+1 < len(header); k += 2 {
				req.Header.Set(header[k], header[k+1])
			}
			res, err := g.Client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
			statuses[i] = res.StatusCode
		}()
	}
	wg.Wait()
	return statuses
}

func count(statuses []int, status int) int {
	n := 0
	for _, s := range statuses {
		if s == status {
			n++
		}
	}
	return n
}

func TestRateLimitUpstreamNeverSeesMoreThanTheRate(t *testing.T) {
	a, up := countingUpstream(t)
	g := rateLimited(t, up, `				rate 20/s
				burst 2
				max_wait 1s`)
	start := time.Now()
	statuses := concurrently(t, g, 60)
	elapsed := time.Since(start)
	at := a.times()
	// what the bucket allows: the burst, then 20 a second
	if allowed := 2 + int(20*elapsed.Seconds()) + 1; len(at) > allowed {
		t.Fatalf("the upstream got %d requests in %v, more than 2 + 20/s allow (%d)", len(at), elapsed, allowed)
	}
	if n := maxInWindow(at, time.Second); n > 20+2 {
		t.Fatalf("%d requests within one second, over the rate of 20/s + burst 2", n)
	}
	ok, limited := count(statuses, 200), count(statuses, 429)
	if ok+limited != 60 || ok != len(at) {
		t.Fatalf("%d ok, %d rate_limited, upstream saw %d", ok, limited, len(at))
	}
	// waiting up to 1s spreads the burst: about 2 + 20 of the 60 pass
	if ok < 15 || limited < 30 {
		t.Fatalf("%d passed, %d refused: want about 22 and 38", ok, limited)
	}
}

func TestRateLimitBoundedWaitsSpreadABurstInsteadOfRefusingIt(t *testing.T) {
	a, up := countingUpstream(t)
	g := rateLimited(t, up, `				rate 20/s
				burst 1
				max_wait 2s`)
	statuses := concurrently(t, g, 10)
	if n := count(statuses, 200); n != 10 {
		t.Fatalf("%d of 10 passed: with time to wait, a burst is spread, not refused", n)
	}
	at := a.times()
	if span := at[len(at)-1].Sub(at[0]); span < 400*time.Millisecond {
		t.Fatalf("10 requests at 20/s reached the upstream within %v, want about 450ms", span)
	}
	if e := g.lastEntry(); e.Outcome != "ok" {
		t.Fatalf("log: %s", e.raw)
	}
}

func TestRateLimitRetriesTakeTokens(t *testing.T) {
	a := new(arrivals)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if a.note(r) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // no Retry-After
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 1ms 1ms
			}
			rate_limit {
				rate 5/s
				burst 1
				max_wait 1s
			}
		}`))
	res, _ := g.get("/")
	expect(t, res, http.StatusOK, "ok")
	at := a.times()
	if len(at) != 2 {
		t.Fatalf("upstream got %d requests, want 2", len(at))
	}
	// the backoff is 1ms; the retry waited for its token instead
	if gap := at[1].Sub(at[0]); gap < 150*time.Millisecond {
		t.Fatalf("the retry came %v after the first try: at 5/s it must wait about 200ms for a token", gap)
	}
}

func TestRateLimitRetryWithNoTokenInTimePassesTheAnswer(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "busy")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 1ms 1ms
			}
			rate_limit {
				rate 1/m
				max_wait 100ms
			}
			breaker off
		}`))
	res, _ := g.get("/")
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("X-Upstream") != "busy" || res.Header.Get("X-Outcome") != "upstream_status" {
		t.Fatalf("got %d %q: want the upstream's 503 as it was", res.StatusCode, res.Header.Get("X-Outcome"))
	}
	if e := g.lastEntry(); e.Denied != "rate_limit" || e.Attempts != 1 {
		t.Fatalf("want one try and retry_denied rate_limit: %s", e.raw)
	}
	if v := metricsValue(metricsScrape(t), "caddy_resilient_retries_denied_total", map[string]string{"upstream": up.addr, "reason": "rate_limit"}); v != 1 {
		t.Fatalf("retries_denied_total{reason=rate_limit} = %v", v)
	}
}

func TestRateLimitRetryAfterPausesAllTrafficToTheUpstream(t *testing.T) {
	a := new(arrivals)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if a.note(r) == 1 {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry off
			rate_limit {
				rate 100/s
				max_wait 200ms
			}
		}`))
	first, _ := g.get("/")
	if first.StatusCode != http.StatusTooManyRequests || first.Header.Get("X-Outcome") != "ok" {
		t.Fatalf("the upstream's 429: %d %q", first.StatusCode, first.Header.Get("X-Outcome"))
	}
	paused := time.Now()
	for i := 0; i < 3; i++ {
		res, _ := g.get("/")
		expect(t, res, http.StatusTooManyRequests, "rate_limited")
		s, err := strconv.Atoi(res.Header.Get("X-Retry-After"))
		if left := 2*time.Second - time.Since(paused); err != nil || s < 1 || time.Duration(s)*time.Second < left {
			t.Fatalf("Retry-After %q with %v of the pause left", res.Header.Get("X-Retry-After"), left)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if n := len(a.times()); n != 1 {
		t.Fatalf("the upstream got %d requests during the pause it asked for", n)
	}
	time.Sleep(time.Until(paused.Add(2100 * time.Millisecond)))
	res, _ := g.get("/")
	expect(t, res, http.StatusOK, "ok")
	at := a.times()
	if len(at) != 2 || at[1].Sub(at[0]) < 2*time.Second {
		t.Fatalf("traffic resumed %v after the 429, want after its Retry-After of 2s", at[len(at)-1].Sub(at[0]))
	}
	e := g.entries(5)[3]
	if e.Outcome != "rate_limited" || e.Attempts != 0 || e.Status != http.StatusTooManyRequests {
		t.Fatalf("log of a refusal during the pause: %s", e.raw)
	}
}

func TestRateLimitPerKeyBucketsDoNotStarveEachOther(t *testing.T) {
	a, up := countingUpstream(t)
	g := rateLimited(t, up, `				rate 2/s
				burst 1
				max_wait 0
				key {http.request.header.X-Tenant}`)
	noisy := concurrently(t, g, 8, "X-Tenant", "noisy")
	if n := count(noisy, 200); n != 1 {
		t.Fatalf("the noisy tenant got %d through at 2/s burst 1, no waiting", n)
	}
	for _, tenant := range []string{"quiet", "other"} {
		statuses := concurrently(t, g, 1, "X-Tenant", tenant)
		if statuses[0] != 200 {
			t.Fatalf("tenant %s was refused (%d): another key's bucket starved it", tenant, statuses[0])
		}
	}
	if n := len(a.times()); n != 3 {
		t.Fatalf("upstream got %d requests, want 3", n)
	}
}

func TestRateLimitClientThatLeavesWhileWaitingFreesItsPlace(t *testing.T) {
	a, up := countingUpstream(t)
	g := rateLimited(t, up, `				rate 2/s
				burst 1
				max_wait 5s`)
	res, _ := g.get("/") // takes the one token
	expect(t, res, http.StatusOK, "ok")

	// the next waits about 500ms for its token; its client gives up
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost:9080/", nil)
	if res, err := g.Client.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("the waiting request answered %d before its client left", res.StatusCode)
	}
	start := time.Now()
	res, _ = g.get("/") // takes the place given back
	expect(t, res, http.StatusOK, "ok")
	if waited := time.Since(start); waited > 700*time.Millisecond {
		t.Fatalf("the next request waited %v: the place of the client that left was not given back (about 400ms, not 900ms)", waited)
	}
	if n := len(a.times()); n != 2 {
		t.Fatalf("upstream got %d requests, want 2", n)
	}
	var outcomes []string
	for _, e := range g.entries(3) {
		outcomes = append(outcomes, e.Outcome)
	}
	if fmt.Sprint(outcomes) != "[ok canceled ok]" {
		t.Fatalf("outcomes %v", outcomes)
	}
}

func TestRateLimitMetrics(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			rate_limit {
				rate 1/m
				max_wait 0
			}
		}`))
	g.get("/")
	res, _ := g.get("/")
	expect(t, res, http.StatusTooManyRequests, "rate_limited")
	s := metricsScrape(t)
	if v := metricsValue(s, "caddy_resilient_requests_total", map[string]string{"upstream": up.addr, "outcome": "rate_limited"}); v != 1 {
		t.Errorf("requests_total{rate_limited} = %v, want 1", v)
	}
	if v := metricsValue(s, "caddy_resilient_rate_limit_wait_seconds_count", map[string]string{"upstream": up.addr}); v != 1 {
		t.Errorf("rate_limit_wait_seconds_count = %v, want 1 (the attempt that got a token)", v)
	}
}
