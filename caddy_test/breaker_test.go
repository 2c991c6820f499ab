package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// breakerTransport is a transport block with retries off (so each
// request is one attempt) and the given breaker settings.
func breakerTransport(settings string) string {
	return fmt.Sprintf(`transport resilient {
			retry off
			breaker {
				%s
			}
		}`, settings)
}

// breakerStatusUpstream answers every request with status.
func breakerStatusUpstream(t *testing.T, status int) *upstream {
	return startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(status)
	})
}

// breakerExpectOpen checks that a request is turned away by the open
// breaker, and returns its Retry-After placeholder in seconds.
func breakerExpectOpen(t *testing.T, g *gateway) int {
	t.Helper()
	res, _ := g.get("/")
	expect(t, res, http.StatusServiceUnavailable, "breaker_open")
	if b := res.Header.Get("X-Breaker"); b != "open" && b != "half_open" {
		t.Errorf("X-Breaker %q on breaker_open", b)
	}
	s, err := strconv.Atoi(res.Header.Get("X-Retry-After"))
	if err != nil || s < 1 {
		t.Fatalf("X-Retry-After %q, want whole seconds", res.Header.Get("X-Retry-After"))
	}
	return s
}

func TestBreakerTripsOnFailureRatio(t *testing.T) {
	var n atomic.Int64
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	g := loadGateway(t, proxySite(up.addr, breakerTransport(`
				failure_ratio 0.5
				min_requests 4
				consecutive_failures 0
				open_for 10s`)))
	for i, want := range []int{200, 503, 200} {
		res, _ := g.get("/")
		if res.StatusCode != want {
			t.Fatalf("request %d: status %d, want %d", i+1, res.StatusCode, want)
		}
	}
	res, _ := g.get("/") // 2 failures in 4: the ratio trips it
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	for i := 0; i < 5; i++ {
		if s := breakerExpectOpen(t, g); s < 9 || s > 10 {
			t.Errorf("retry_after %d, want the 10s open_for", s)
		}
	}
	if c := up.count.Load(); c != 4 {
		t.Errorf("upstream got %d requests, want 4: an open breaker sends nothing", c)
	}
}

func TestBreakerTripsOnConsecutiveFailures(t *testing.T) {
	up := breakerStatusUpstream(t, http.StatusInternalServerError)
	g := loadGateway(t, proxySite(up.addr, breakerTransport(`
				consecutive_failures 3
				min_requests 100`)))
	for i := 0; i < 3; i++ {
		res, _ := g.get("/")
		expect(t, res, http.StatusInternalServerError, "upstream_status")
	}
	for i := 0; i < 5; i++ {
		breakerExpectOpen(t, g)
	}
	if c := up.count.Load(); c != 3 {
		t.Errorf("upstream got %d requests, want 3", c)
	}
	e := g.lastEntry()
	if e.Outcome != "breaker_open" || e.Attempts != 0 || e.Breaker != "open" {
		t.Errorf("log entry: outcome %q attempts %d breaker %q", e.Outcome, e.Attempts, e.Breaker)
	}
}

func TestBreakerTripsOnConnectErrors(t *testing.T) {
	g := loadGateway(t, proxySite(closedPort(t), breakerTransport(`consecutive_failures 2`)))
	for i := 0; i < 2; i++ {
		res, _ := g.get("/")
		expect(t, res, http.StatusBadGateway, "connect_error")
	}
	breakerExpectOpen(t, g)
}

func TestBreakerTripsOnTimeouts(t *testing.T) {
	s := startSilent(t, true)
	g := loadGateway(t, proxySite(s.Addr().String(), `transport resilient {
			timeouts {
				read 100ms
			}
			retry off
			breaker {
				consecutive_failures 2
			}
		}`))
	for i := 0; i < 2; i++ {
		res, _ := g.get("/")
		expect(t, res, http.StatusGatewayTimeout, "read_timeout")
	}
	breakerExpectOpen(t, g)
	if c := s.conns.Load(); c != 2 {
		t.Errorf("upstream got %d connections, want 2", c)
	}
}

func TestBreakerTripsOnSlowCalls(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(150 * time.Millisecond)
	})
	g := loadGateway(t, proxySite(up.addr, breakerTransport(`
				slow_call 50ms
				consecutive_failures 2`)))
	for i := 0; i < 2; i++ {
		res, _ := g.get("/")
		expect(t, res, http.StatusOK, "ok") // passed on, but counted as failures
	}
	breakerExpectOpen(t, g)
	if c := up.count.Load(); c != 2 {
		t.Errorf("upstream got %d requests, want 2", c)
	}
}

// breakerHangingUpstream fails its first request with 503, then holds
// every request carrying X-Hang until the client goes away, and answers
// the others 200.
func breakerHangingUpstream(t *testing.T) *upstream {
	var n atomic.Int64
	return startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case n.Add(1) == 1:
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.Header.Get("X-Hang") != "":
			<-r.Context().Done()
		}
	})
}

// breakerCancelled sends a request that hangs, and gives up on it.
func breakerCancelled(t *testing.T, g *gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost:9080/hang", nil)
	req.Header.Set("X-Hang", "1")
	if res, err := http.DefaultClient.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("hanging request answered %d", res.StatusCode)
	}
}

// breakerLogMark returns where the log stands, for breakerSince. Each
// test's log file outlives the test (go test -count=2 appends to it).
func breakerLogMark(g *gateway) int { return len(g.entries(0)) }

// breakerSince returns the log entries written after mark.
func breakerSince(g *gateway, mark int) []logEntry {
	return g.entries(0)[mark:]
}

// breakerWaitOutcome waits for n log entries after mark that end in
// outcome.
func breakerWaitOutcome(t *testing.T, g *gateway, mark int, outcome string, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := 0
		for _, e := range breakerSince(g, mark) {
			if e.Outcome == outcome {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d log entries with outcome %s, want %d", got, outcome, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// breakerOneProbe trips on one failure, then lets one probe through
// after 200ms.
const breakerOneProbe = `consecutive_failures 1
				open_for 200ms
				half_open_requests 1`

// breakerTripThenWait sends a request the upstream fails, checks that
// the breaker opened, and waits until it lets a probe through.
func breakerTripThenWait(t *testing.T, g *gateway) {
	t.Helper()
	res, _ := g.get("/")
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	breakerExpectOpen(t, g)
	time.Sleep(250 * time.Millisecond)
}

func TestBreakerIgnoresClientCancellations(t *testing.T) {
	up := breakerHangingUpstream(t)
	g := loadGateway(t, proxySite(up.addr, breakerTransport(`consecutive_failures 2`)))
	res, _ := g.get("/") // the upstream's one 503: one failure
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	mark := breakerLogMark(g)
	for i := 0; i < 3; i++ {
		breakerCancelled(t, g)
	}
	breakerWaitOutcome(t, g, mark, "canceled", 3)
	res, _ = g.get("/")
	expect(t, res, http.StatusOK, "ok")
}

func TestBreakerCanceledProbeDoesNotWedgeHalfOpen(t *testing.T) {
	up := breakerHangingUpstream(t)
	g := loadGateway(t, proxySite(up.addr, breakerTransport(breakerOneProbe)))
	breakerTripThenWait(t, g)
	mark := breakerLogMark(g)
	breakerCancelled(t, g) // the one probe; its client goes away
	breakerWaitOutcome(t, g, mark, "canceled", 1)
	res, _ := g.get("/")
	expect(t, res, http.StatusOK, "ok")
	res, _ = g.get("/")
	expect(t, res, http.StatusOK, "ok")
}

func TestBreakerHalfOpenLimitsProbesUnderLoad(t *testing.T) {
	var n, probes atomic.Int64
	release := make(chan struct{})
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		probes.Add(1)
		<-release
	})
	g := loadGateway(t, proxySite(up.addr, breakerTransport(`
				consecutive_failures 1
				open_for 300ms
				half_open_requests 2`)))
	res, _ := g.get("/")
	expect(t, res, http.StatusBadGateway, "upstream_status")
	time.Sleep(350 * time.Millisecond)

	const load = 10
	type answer struct {
		status              int
		outcome, retryAfter string
	}
	answers := make(chan answer, load)
	var wg sync.WaitGroup
	for i := 0; i < load; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := g.Client.Get("http://localhost:9080/")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			answers <- answer{res.StatusCode, res.Header.Get("X-Outcome"), res.Header.Get("X-Retry-After")}
		}()
	}
	for i := 0; i < load-2; i++ {
		select {
		case a := <-answers:
			if a.status != http.StatusServiceUnavailable || a.outcome != "breaker_open" || a.retryAfter != "1" {
				t.Errorf("while the probes are out: %+v, want 503 breaker_open retry in 1s", a)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("only %d of %d requests were turned away", i, load-2)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); probes.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if p := probes.Load(); p != 2 {
		t.Errorf("%d probes reached the upstream, want half_open_requests = 2", p)
	}
	close(release)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.status != http.StatusOK || a.outcome != "ok" {
			t.Errorf("probe answered %+v, want 200 ok", a)
		}
	}
	// two successful probes closed it
	res, _ = g.get("/")
	expect(t, res, http.StatusOK, "ok")
}

func TestBreakerReopensOnAFailedProbeThenRecovers(t *testing.T) {
	var n atomic.Int64
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	g := loadGateway(t, proxySite(up.addr, breakerTransport(breakerOneProbe)))
	breakerTripThenWait(t, g)
	breakerTripThenWait(t, g) // the probe fails: open again
	res, _ := g.get("/")      // the probe succeeds
	expect(t, res, http.StatusOK, "ok")
	res, _ = g.get("/")
	expect(t, res, http.StatusOK, "ok")
	if c := up.count.Load(); c != 4 {
		t.Errorf("upstream got %d requests, want 4", c)
	}
}

func TestBreakerReloadKeepsStateUnlessSettingsChange(t *testing.T) {
	up := breakerStatusUpstream(t, http.StatusServiceUnavailable)
	site := func(marker, settings string) string {
		return proxySite(up.addr, breakerTransport(settings)+"\n\t\theader_down X-Config "+marker)
	}
	const settings = `consecutive_failures 1
				open_for 10s`
	g := loadGateway(t, site("one", settings))
	res, _ := g.get("/")
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	breakerExpectOpen(t, g)

	// a different config, same breaker settings: the breaker stays open
	g = loadGateway(t, site("two", settings))
	breakerExpectOpen(t, g)
	if c := up.count.Load(); c != 1 {
		t.Fatalf("upstream got %d requests after the reload, want 1", c)
	}

	// changed settings: a fresh, closed breaker
	g = loadGateway(t, site("three", `consecutive_failures 1
				open_for 9s`))
	res, _ = g.get("/")
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	if c := up.count.Load(); c != 2 {
		t.Errorf("upstream got %d requests, want 2", c)
	}
}

// breakerFailoverPair starts upstream a, which fails every request with
// 503, and b, which echoes the body; both note the bodies they got.
func breakerFailoverPair(t *testing.T) (a, b *upstream, aBodies, bBodies *[]string) {
	var mu sync.Mutex
	aBodies, bBodies = new([]string), new([]string)
	note := func(into *[]string, r *http.Request) string {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		*into = append(*into, string(body))
		return string(body)
	}
	a = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		note(aBodies, r)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	b = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, note(bBodies, r))
	})
	return a, b, aBodies, bBodies
}

// breakerFailoverSite proxies to a then b with lbOptions and a breaker
// two failures trip. Retries stay on, so the transport keeps request
// bodies for replay: a POST's 503 is still not retried, since it was
// sent.
func breakerFailoverSite(a, b *upstream, lbOptions string) string {
	return proxySite(a.addr+" "+b.addr, lbOptions+`
		transport resilient {
			breaker {
				consecutive_failures 2
			}
		}`)
}

func TestBreakerFailoverPolicySendsPostsToAHealthyUpstream(t *testing.T) {
	a, b, aBodies, _ := breakerFailoverPair(t)
	g := loadGateway(t, breakerFailoverSite(a, b, `lb_policy resilient first`))
	mark := breakerLogMark(g)
	for i := 0; i < 2; i++ {
		res, _ := post(t, g, "/orders", "trip-"+strconv.Itoa(i))
		expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	}
	for i := 0; i < 5; i++ {
		body := fmt.Sprintf("order-%d", i)
		res, got := post(t, g, "/orders", body)
		expect(t, res, http.StatusOK, "ok")
		if got != body {
			t.Errorf("healthy upstream got body %q, want %q", got, body)
		}
	}
	if c := a.count.Load(); c != 2 || len(*aBodies) != 2 {
		t.Errorf("the open upstream got %d requests, want the 2 that tripped it", c)
	}
	g.entries(mark + 7)
	for _, e := range breakerSince(g, mark) {
		if e.Outcome == "breaker_open" {
			t.Errorf("a request was sent to the open upstream: %s", e.raw)
		}
	}
}

func TestBreakerFailoverPolicyFallsBackToAllWhenEveryBreakerIsOpen(t *testing.T) {
	a := breakerStatusUpstream(t, http.StatusServiceUnavailable)
	b := breakerStatusUpstream(t, http.StatusServiceUnavailable)
	g := loadGateway(t, breakerFailoverSite(a, b, `lb_policy resilient round_robin`))
	for i := 0; i < 4; i++ {
		res, _ := post(t, g, "/orders", "x")
		expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	}
	res, _ := post(t, g, "/orders", "x")
	expect(t, res, http.StatusServiceUnavailable, "breaker_open")
	if a.count.Load() != 2 || b.count.Load() != 2 {
		t.Errorf("upstreams got %d and %d requests, want 2 each", a.count.Load(), b.count.Load())
	}
}

func TestBreakerFailoverLBRetriesMovesPostsWithTheirBody(t *testing.T) {
	a, b, aBodies, bBodies := breakerFailoverPair(t)
	g := loadGateway(t, breakerFailoverSite(a, b, "lb_policy round_robin\n\t\tlb_retries 1"))
	// round robin alternates: send until a has failed twice and tripped
	for i := 0; a.count.Load() < 2; i++ {
		if i == 6 {
			t.Fatalf("a got %d requests in 6", a.count.Load())
		}
		post(t, g, "/orders", "trip")
	}
	before, mark := len(*bBodies), breakerLogMark(g)
	for i := 0; i < 6; i++ {
		body := fmt.Sprintf("order-%d-%s", i, strings.Repeat("x", 1000))
		res, got := post(t, g, "/orders", body)
		expect(t, res, http.StatusOK, "ok")
		if got != body {
			t.Fatalf("request %d: healthy upstream echoed %d bytes, want the %d sent", i, len(got), len(body))
		}
	}
	if c := a.count.Load(); c != 2 || len(*aBodies) != 2 {
		t.Errorf("the open upstream got %d requests, want 2", c)
	}
	if got := len(*bBodies) - before; got != 6 {
		t.Errorf("the healthy upstream got %d of the 6 orders", got)
	}
	moved := 0
	g.entries(mark + 6)
	for _, e := range breakerSince(g, mark) {
		if e.Outcome == "breaker_open" && e.Method == http.MethodPost && e.Attempts == 0 {
			moved++
		}
	}
	if moved < 3 {
		t.Errorf("%d POSTs turned away by the open breaker and moved by lb_retries, want most of the 6", moved)
	}
}

// adminCall sends a request to Caddy's admin endpoint and decodes its
// JSON answer into out (if not nil).
func adminCall(t *testing.T, method, path string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://localhost:2999"+path, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: content type %q, body %s", method, path, ct, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, body)
		}
	}
	return res.StatusCode
}

// adminBreaker is a breaker as GET /resilient/breakers shows it.
type adminBreaker struct {
	Upstream string `json:"upstream"`
	Seen     bool   `json:"seen"`
	State    string `json:"state"`
	Counts   struct {
		Requests int `json:"requests"`
		Failures int `json:"failures"`
	} `json:"counts"`
	OpenUntil  *time.Time `json:"open_until"`
	OpenPeriod string     `json:"open_period"`
	Override   *struct {
		State        string     `json:"state"`
		Until        *time.Time `json:"until"`
		BreakerState string     `json:"breaker_state"`
	} `json:"override"`
	Settings struct {
		ConsecutiveFailures int    `json:"consecutive_failures"`
		OpenFor             string `json:"open_for"`
		OpenForMax          string `json:"open_for_max"`
	} `json:"settings"`
}

// adminBreakerOf returns the listed breaker of upstream addr.
func adminBreakerOf(t *testing.T, addr string) adminBreaker {
	t.Helper()
	var all []adminBreaker
	if status := adminCall(t, http.MethodGet, "/resilient/breakers", &all); status != http.StatusOK {
		t.Fatalf("GET /resilient/breakers: %d", status)
	}
	for _, b := range all {
		if b.Upstream == addr {
			return b
		}
	}
	t.Fatalf("no breaker for %s in %+v", addr, all)
	return adminBreaker{}
}

func TestAdminBreakerRoutes(t *testing.T) {
	var fail atomic.Bool
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	// a fixed period, long enough to outlast the test's checks
	g := loadGateway(t, proxySite(up.addr, breakerTransport(`consecutive_failures 1
				open_for 10s`)))
	res, _ := g.get("/") // the breaker is made on first use
	expect(t, res, http.StatusOK, "ok")

	b := adminBreakerOf(t, up.addr)
	if b.State != "closed" || b.Counts.Requests != 1 || b.Override != nil || b.OpenUntil != nil ||
		b.Settings.ConsecutiveFailures != 1 || b.Settings.OpenFor != "10s" || b.Settings.OpenForMax != "10s" {
		t.Errorf("GET: %+v", b)
	}

	var changed []adminBreaker
	q := "?upstream=" + up.addr
	if s := adminCall(t, http.MethodPost, "/resilient/breakers/force_open"+q+"&for=30s", &changed); s != http.StatusOK || len(changed) != 1 {
		t.Fatalf("force_open: %d %+v", s, changed)
	}
	if s := breakerExpectOpen(t, g); s < 29 || s > 30 {
		t.Errorf("forced open for 30s: retry_after %d", s)
	}
	if c := up.count.Load(); c != 1 {
		t.Errorf("forced open, yet the upstream got a request")
	}
	b = adminBreakerOf(t, up.addr)
	if b.State != "open" || b.Override == nil || b.Override.State != "open" || b.Override.Until == nil ||
		b.Override.BreakerState != "closed" {
		t.Errorf("GET after force_open: %+v %+v", b, b.Override)
	}

	fail.Store(true) // trip it for real, behind a force_close
	adminCall(t, http.MethodPost, "/resilient/breakers/reset"+q, nil)
	res, _ = g.get("/")
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	breakerExpectOpen(t, g)
	fail.Store(false)
	if s := adminCall(t, http.MethodPost, "/resilient/breakers/force_close"+q, nil); s != http.StatusOK {
		t.Fatalf("force_close: %d", s)
	}
	res, _ = g.get("/")
	expect(t, res, http.StatusOK, "ok")
	b = adminBreakerOf(t, up.addr)
	if b.State != "closed" || b.Override == nil || b.Override.State != "closed" || b.Override.Until != nil ||
		b.Override.BreakerState != "open" || b.OpenUntil == nil {
		t.Errorf("GET after force_close: %+v %+v", b, b.Override)
	}

	if s := adminCall(t, http.MethodPost, "/resilient/breakers/reset"+q, nil); s != http.StatusOK {
		t.Fatalf("reset: %d", s)
	}
	b = adminBreakerOf(t, up.addr)
	if b.State != "closed" || b.Override != nil || b.OpenUntil != nil || b.Counts.Requests != 0 {
		t.Errorf("GET after reset: %+v", b)
	}
	res, _ = g.get("/")
	expect(t, res, http.StatusOK, "ok")
}

func TestAdminBreakerRoutesRejectBadInput(t *testing.T) {
	up := breakerStatusUpstream(t, http.StatusOK)
	g := loadGateway(t, proxySite(up.addr, breakerTransport(`consecutive_failures 1`)))
	g.get("/")
	q := "?upstream=" + up.addr
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodPost, "/resilient/breakers", http.StatusMethodNotAllowed},
		{http.MethodGet, "/resilient/breakers/reset" + q, http.StatusMethodNotAllowed},
		{http.MethodPut, "/resilient/breakers/force_open" + q + "&for=1s", http.StatusMethodNotAllowed},
		{http.MethodPost, "/resilient/breakers/trip" + q, http.StatusNotFound},
		{http.MethodPost, "/resilient/breakers/reset", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/reset?upstream=127.0.0.1:1", http.StatusNotFound},
		{http.MethodPost, "/resilient/breakers/force_open" + q, http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open" + q + "&for=later", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open" + q + "&for=-1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_close" + q + "&for=1fortnight", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open" + q + "&for=1000000h", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open" + q + "&upstream=127.0.0.1:2&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + strings.Repeat("h", 5000) + ":80&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=%zz&for=1s", http.StatusBadRequest},
		{http.MethodGet, "/resilient/nothing-here", http.StatusNotFound},
	} {
		var body struct {
			Error string `json:"error"`
		}
		if s := adminCall(t, tc.method, tc.path, &body); s != tc.status || body.Error == "" {
			t.Errorf("%s %s: %d %q, want %d with a JSON error", tc.method, tc.path, s, body.Error, tc.status)
		}
	}
	if b := adminBreakerOf(t, up.addr); b.State != "closed" || b.Override != nil {
		t.Errorf("bad input changed the breaker: %+v", b)
	}
	res, _ := g.get("/")
	expect(t, res, http.StatusOK, "ok")
}

// breakerExpectOpenFor checks that the breaker of addr is open for a
// period of want, from about now: the admin API says so (open_period,
// open_until) and so does a refused request's Retry-After.
func breakerExpectOpenFor(t *testing.T, g *gateway, addr string, want time.Duration) {
	t.Helper()
	b := adminBreakerOf(t, addr)
	if b.State != "open" || b.OpenPeriod != want.String() || b.OpenUntil == nil {
		t.Fatalf("breaker %s, open_period %q, open_until %v; want open for %v", b.State, b.OpenPeriod, b.OpenUntil, want)
	}
	if left := time.Until(*b.OpenUntil); left <= want/2 || left > want {
		t.Errorf("open for %v more, want most of %v", left, want)
	}
	if s := breakerExpectOpen(t, g); s != int(want/time.Second) {
		t.Errorf("retry_after %d, want the %v open period", s, want)
	}
}

// breakerLoggedPeriods returns the open_for of the logged changes of
// the breaker of addr to open, in seconds.
func breakerLoggedPeriods(t *testing.T, g *gateway, addr string) []float64 {
	t.Helper()
	data, err := os.ReadFile(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []float64
	for _, line := range strings.Split(string(data), "\n") {
		var e struct {
			Level, Msg, Upstream, To string
			OpenFor                  *float64 `json:"open_for"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "breaker state changed" && e.Upstream == addr && e.To == "open" {
			if e.Level != "warn" || e.OpenFor == nil {
				t.Errorf("change to open logged without its period, or not at warn: %s", line)
				continue
			}
			out = append(out, *e.OpenFor)
		}
	}
	return out
}

// An upstream that is down (its port refuses connections) opens the
// breaker for open_for; the probe after it fails and opens it for twice
// that; once the upstream is back, the first request after that period
// probes it and closes the breaker, and nothing reached the upstream
// while the breaker was open.
func TestBreakerOpenPeriodDoublesWhileTheUpstreamStaysDown(t *testing.T) {
	addr := closedPort(t)
	g := loadGateway(t, proxySite(addr, breakerTransport(`consecutive_failures 1
				open_for 1s 4s
				half_open_requests 1`)))
	res, _ := g.get("/")
	expect(t, res, http.StatusBadGateway, "connect_error")
	breakerExpectOpenFor(t, g, addr, time.Second)

	deadline := time.Now().Add(3 * time.Second)
	for adminBreakerOf(t, addr).State != "half_open" {
		if time.Now().After(deadline) {
			t.Fatal("not half-open 3s after a 1s open period")
		}
		time.Sleep(20 * time.Millisecond)
	}
	res, _ = g.get("/") // the probe: still down
	expect(t, res, http.StatusBadGateway, "connect_error")
	breakerExpectOpenFor(t, g, addr, 2*time.Second)
	until := *adminBreakerOf(t, addr).OpenUntil

	// the upstream comes back while the breaker is open
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	var served atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served.Add(1) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	back := time.Now()

	var closedAt time.Time
	for closedAt.IsZero() {
		res, _ := g.get("/")
		switch now := time.Now(); {
		case res.StatusCode == http.StatusOK && res.Header.Get("X-Outcome") == "ok":
			closedAt = now
			if now.Before(until) {
				t.Errorf("answered %v before the open period ended", until.Sub(now))
			}
		case res.Header.Get("X-Outcome") != "breaker_open":
			t.Fatalf("while the upstream is back: %d %q, want breaker_open, then ok", res.StatusCode, res.Header.Get("X-Outcome"))
		case now.After(until.Add(3 * time.Second)):
			t.Fatalf("still refused 3s after the open period ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b := adminBreakerOf(t, addr); b.State != "closed" || b.OpenPeriod != "" {
		t.Errorf("after a successful probe: %s, open_period %q; want closed", b.State, b.OpenPeriod)
	}
	if n := served.Load(); n != 1 {
		t.Errorf("the upstream got %d requests, want the one probe: nothing while open", n)
	}
	t.Logf("closed %v after the upstream was back, %v after the open period ended",
		closedAt.Sub(back).Round(time.Millisecond), closedAt.Sub(until).Round(time.Millisecond))

	if got := breakerLoggedPeriods(t, g, addr); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Errorf("logged open periods %v, want [1 2] (seconds)", got)
	}
}
