package integration

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The tail (SPEC §14): hedged requests, and caller deadlines.

// tailUpstream is an upstream that answers each arrival as answer says and
// remembers when each came, what its deadline headers said, and whether
// its request's context ended before it answered (the gateway gave up
// on it).
type tailUpstream struct {
	*upstream
	mu       sync.Mutex
	at       []time.Time
	headers  []http.Header
	canceled atomic.Int64
}

func startTail(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request) bool) *tailUpstream {
	a := &tailUpstream{}
	a.upstream = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		a.mu.Lock()
		a.at = append(a.at, time.Now())
		a.headers = append(a.headers, r.Header.Clone())
		n := len(a.at)
		a.mu.Unlock()
		if !answer(n, w, r) {
			a.canceled.Add(1)
		}
	})
	return a
}

// hold answers after d, unless the request ends first (it reports false).
func hold(w http.ResponseWriter, r *http.Request, d time.Duration) bool {
	select {
	case <-time.After(d):
		io.WriteString(w, "after "+d.String())
		return true
	case <-r.Context().Done():
		return false
	}
}

func (a *tailUpstream) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.at)
}

func (a *tailUpstream) header(i int, name string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.headers[i].Get(name)
}

// hedgeSite is a gateway on :9080 in front of up with the given
// transport body.
func hedgeSite(up, transport string) string {
	return fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient {
			%s
		}
		header_down X-Outcome {http.resilient.outcome}
		header_down X-Attempts {http.resilient.attempts}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`, up, transport)
}

func TestHedgeWinsAgainstAStuckFirstAttempt(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			return hold(w, r, 5*time.Second) // stuck
		}
		io.WriteString(w, "hedge")
		return true
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 50ms\n }\n breaker {\n consecutive_failures 1\n }"))
	start := time.Now()
	res, body := g.get("/slow")
	took := time.Since(start)
	expect(t, res, http.StatusOK, "ok")
	if body != "hedge" || took > 2*time.Second {
		t.Fatalf("got %q after %v, want the hedge's answer long before the stuck attempt's", body, took)
	}
	if up.count() != 2 {
		t.Fatalf("%d tailUpstream, want the first and one hedge", up.count())
	}
	if gap := up.at[1].Sub(up.at[0]); gap < 40*time.Millisecond {
		t.Fatalf("the hedge came %v after the first: before after (50ms)", gap)
	}
	// the loser is canceled upstream
	poll(t, 2*time.Second, "the stuck attempt's context to end upstream", func() bool { return up.canceled.Load() == 1 })
	e := g.lastEntry()
	if !strings.Contains(e.raw, `"hedge":true`) || e.Attempts != 2 || len(e.Tries) != 2 {
		t.Errorf("log entry %s, want two tries, the second a hedge", e.raw)
	}
	if got := res.Header.Get("X-Attempts"); got != "2" {
		t.Errorf("{http.resilient.attempts} = %q, want 2", got)
	}
	s := metricsScrape(t)
	if v := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "won"}); v != 1 {
		t.Errorf("hedges_total{won} = %v, want 1", v)
	}
	// the hedge that won is one attempt, counted once
	if v := metricsSum(s, "caddy_resilient_attempts_total", map[string]string{"upstream": up.addr}); v != 2 {
		t.Errorf("attempts_total grew by %v for an upstream that saw 2 requests", v)
	}
	// the canceled loser counted for neither side of the breaker: with
	// consecutive_failures 1, a failure would have opened it
	if b := adminBreakerOf(t, up.addr); b.State != "closed" || b.Counts.Failures != 0 {
		t.Errorf("breaker %+v after a canceled loser, want closed with no failure", b)
	}
}

// A hedge that loses still reached the upstream: the log, the placeholder
// and attempts_total show it, whether it failed on its own or was
// canceled because the first attempt answered.
func TestHedgeThatLosesIsCounted(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		switch n {
		case 2: // the first request's hedge fails at once
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		case 3: // the second request's first attempt
			return hold(w, r, 100*time.Millisecond)
		case 4: // its hedge never answers
			return hold(w, r, 5*time.Second)
		}
		return hold(w, r, 150*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 30ms\n }"))
	attempts := func() float64 {
		return metricsSum(metricsScrape(t), "caddy_resilient_attempts_total", map[string]string{"upstream": up.addr})
	}
	lost := func() float64 {
		return metricsValue(metricsScrape(t), "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "lost"})
	}

	res, body := g.get("/a")
	expect(t, res, http.StatusOK, "ok")
	if body != "after 150ms" || up.count() != 2 {
		t.Fatalf("got %q after %d arrivals, want the first attempt's answer after the hedge's 503", body, up.count())
	}
	if got := res.Header.Get("X-Attempts"); got != "2" {
		t.Errorf("{http.resilient.attempts} = %q for an upstream that saw the request twice", got)
	}
	e := g.lastEntry()
	if len(e.Tries) != 2 || e.Attempts != 2 || !e.Tries[0].Hedge || e.Tries[0].Status != 503 || e.Tries[1].Hedge {
		t.Errorf("log entry %s, want two tries: the hedge's 503, then the first attempt's answer", e.raw)
	}
	if v := attempts(); v != 2 {
		t.Errorf("attempts_total = %v after 2 arrivals", v)
	}
	if v := lost(); v != 1 {
		t.Errorf("hedges_total{lost} = %v, want 1", v)
	}

	res, _ = g.get("/b")
	expect(t, res, http.StatusOK, "ok")
	if got := res.Header.Get("X-Attempts"); got != "2" {
		t.Errorf("{http.resilient.attempts} = %q for a request whose canceled hedge reached the upstream", got)
	}
	poll(t, 2*time.Second, "the canceled hedge's request to end upstream", func() bool { return up.canceled.Load() == 1 })
	e = g.lastEntry()
	if len(e.Tries) != 2 || !e.Tries[0].Hedge || e.Tries[0].Outcome != "canceled" || e.Tries[1].Outcome != "ok" {
		t.Errorf("log entry %s, want the canceled hedge, then the first attempt's answer", e.raw)
	}
	if v := attempts(); v != 4 {
		t.Errorf("attempts_total = %v after 4 arrivals", v)
	}
	poll(t, 2*time.Second, "hedges_total{lost} 2", func() bool { return lost() == 2 })
}

// A hedge refused after it took a rate-limit token gives the token back:
// with a burst of 2, two requests that each had a hedge refused both go.
func TestHedgeRefusedGivesItsTokenBack(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 100*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 20ms\n }\n retry {\n budget 0 0\n }\n rate_limit {\n rate 1/h\n burst 2\n max_wait 0\n }"))
	for _, path := range []string{"/a", "/b"} {
		res, _ := g.get(path)
		expect(t, res, http.StatusOK, "ok")
	}
	if n := up.count(); n != 2 {
		t.Fatalf("%d arrivals, want one per request", n)
	}
	if v := metricsValue(metricsScrape(t), "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "denied"}); v != 2 {
		t.Fatalf("hedges_total{denied} = %v, want 2", v)
	}
}

// laterConnsWait is a listener that hands over its first connection at
// once and each later one only after wait: a TLS handshake on those
// waits that long, so a hedge needing a connection of its own stays
// unsent.
type laterConnsWait struct {
	net.Listener
	wait time.Duration
	n    atomic.Int64
}

func (l *laterConnsWait) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil && l.n.Add(1) > 1 {
		time.Sleep(l.wait)
	}
	return c, err
}

// A hedge canceled before any of it went out never reached the upstream:
// it is no attempt, and its rate-limit token goes back to the bucket.
func TestHedgeThatNeverLeftIsNoAttempt(t *testing.T) {
	var arrivals atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrivals.Add(1)
		hold(w, r, 150*time.Millisecond)
	}))
	srv.Listener.Close()
	srv.Listener = &laterConnsWait{Listener: freshLoopback(t), wait: time.Second}
	srv.StartTLS() // HTTP/1.1 only: a hedge needs a connection of its own
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "https://")
	g := loadGateway(t, hedgeSite("https://"+addr, "tls_insecure_skip_verify\n hedge {\n after 30ms\n }\n rate_limit {\n rate 1/h\n burst 2\n max_wait 0\n }"))

	res, _ := g.get("/a")
	expect(t, res, http.StatusOK, "ok")
	if n := arrivals.Load(); n != 1 {
		t.Fatalf("%d arrivals, want the first attempt only: the hedge's handshake could not finish", n)
	}
	if got := res.Header.Get("X-Attempts"); got != "1" {
		t.Errorf("{http.resilient.attempts} = %q, want 1", got)
	}
	if e := g.lastEntry(); len(e.Tries) != 1 || e.Attempts != 1 {
		t.Errorf("log entry %s, want one try", e.raw)
	}
	s := metricsScrape(t)
	if v := metricsSum(s, "caddy_resilient_attempts_total", map[string]string{"upstream": addr}); v != 1 {
		t.Errorf("attempts_total = %v for 1 arrival", v)
	}
	// the hedge's token is back: the second request gets the bucket's last one
	res, _ = g.get("/b")
	expect(t, res, http.StatusOK, "ok")
}

func TestHedgeNotForPOSTNorAStreamingBody(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 200*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 20ms\n }"))
	res, _ := post(t, g, "/order", "x")
	expect(t, res, http.StatusOK, "ok")
	if n := up.count(); n != 1 {
		t.Fatalf("a POST reached the upstream %d times: it must never be hedged", n)
	}

	// a PUT whose body is still coming when after elapses
	pr, pw := io.Pipe()
	go func() {
		io.WriteString(pw, "part one, ")
		time.Sleep(100 * time.Millisecond)
		io.WriteString(pw, "part two")
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPut, "http://localhost:9080/doc", pr)
	res, _ = g.do(req)
	expect(t, res, http.StatusOK, "ok")
	if n := up.count(); n != 2 {
		t.Fatalf("a PUT streaming its body reached the upstream %d times, want once", n-1)
	}
}

func TestHedgeRefusedByTheBudgetOrTheBreaker(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 150*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 20ms\n }\n retry {\n budget 0 0\n }"))
	res, _ := g.get("/a")
	expect(t, res, http.StatusOK, "ok")
	if n := up.count(); n != 1 {
		t.Fatalf("%d tailUpstream: a budget of nothing refuses the hedge", n)
	}
	if v := metricsValue(metricsScrape(t), "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "denied"}); v != 1 {
		t.Fatalf("hedges_total{denied} = %v, want 1", v)
	}

	// a half-open breaker with its one probe in flight
	var fail atomic.Bool
	probe := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if fail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return hold(w, r, 150*time.Millisecond)
	})
	g = loadGateway(t, hedgeSite(probe.addr, "hedge {\n after 20ms\n }\n retry off\n breaker {\n consecutive_failures 1\n open_for 100ms\n half_open_requests 1\n }"))
	fail.Store(true)
	g.get("/trip")
	fail.Store(false)
	time.Sleep(150 * time.Millisecond) // half-open
	res, _ = g.get("/probe")
	expect(t, res, http.StatusOK, "ok")
	if n := probe.count(); n != 2 {
		t.Fatalf("%d tailUpstream, want the failure and the probe: no hedge past a half-open breaker", n)
	}
}

func TestHedgeDelayFollowsTheUpstreamsPercentile(t *testing.T) {
	var slow atomic.Bool
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if slow.Load() {
			return hold(w, r, 100*time.Millisecond)
		}
		return hold(w, r, 2*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after p50\n min 5ms\n }\n retry {\n budget off\n }"))
	for range 25 {
		g.get("/fast") // 2ms answers: the median is fast
	}
	slow.Store(true)
	gaps := func(n int) []time.Duration {
		var out []time.Duration
		for range n {
			before := up.count()
			g.get("/slow")
			up.mu.Lock()
			if len(up.at) > before+1 {
				out = append(out, up.at[before+1].Sub(up.at[before]))
			}
			up.mu.Unlock()
		}
		return out
	}
	early := gaps(5)
	if len(early) == 0 {
		t.Fatal("no hedge while the median was 2ms and answers took 100ms")
	}
	gaps(40) // the window fills with slow answers
	late := gaps(10)
	t.Logf("hedge gaps while the median was fast: %v; once it was slow: %v", early, late)
	for _, d := range late {
		if d < 50*time.Millisecond {
			t.Fatalf("a hedge %v after the first, once the median was ~100ms: the delay did not adapt", d)
		}
	}
}

func TestDeadlineCapsTotalAndTravelsUpstream(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, time.Second)
	})
	g := loadGateway(t, hedgeSite(up.addr, "deadline {\n send X-Request-Timeout\n }"))
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/api", nil)
	req.Header.Set("X-Request-Timeout", "0.2")
	start := time.Now()
	res, _ := g.do(req)
	took := time.Since(start)
	expect(t, res, http.StatusGatewayTimeout, "total_timeout")
	if took > 800*time.Millisecond {
		t.Fatalf("took %v with a 200ms caller deadline on a 1s upstream", took)
	}
	// in the unit the header is read in: seconds, to the millisecond
	sent := up.header(0, "X-Request-Timeout")
	if left, err := strconv.ParseFloat(sent, 64); !secondsLeft.MatchString(sent) || err != nil || left <= 0 || left > 0.2 {
		t.Fatalf("the upstream was told %q left, want seconds such as 0.183, above 0 and at most 0.2", sent)
	}

	// a caller's deadline never raises total
	g = loadGateway(t, hedgeSite(up.addr, "timeouts {\n total 150ms\n }\n deadline"))
	req.Header.Set("X-Request-Timeout", "5")
	start = time.Now()
	res, _ = g.do(req)
	expect(t, res, http.StatusGatewayTimeout, "total_timeout")
	if took := time.Since(start); took > 800*time.Millisecond {
		t.Fatalf("took %v: a caller's 5s raised a total of 150ms", took)
	}

	// nothing left: 504 at once, nothing sent
	before := up.count()
	req.Header.Set("X-Request-Timeout", "0")
	res, _ = g.do(req)
	expect(t, res, http.StatusGatewayTimeout, "total_timeout")
	if up.count() != before {
		t.Fatal("a request with no time left was sent")
	}
}

func TestDeadlineJunkChangesNothing(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 20*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "timeouts {\n total 3s\n }\n deadline {\n send X-Time-Left ms\n }"))
	for i, v := range []string{"abc", "-1", "NaN", "Inf", "1e309", "", "1.5.2", "10parsecs"} {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/api", nil)
		req.Header.Set("X-Request-Timeout", v)
		res, _ := g.do(req)
		expect(t, res, http.StatusOK, "ok")
		left, _ := strconv.Atoi(up.header(i, "X-Time-Left"))
		if left < 2500 || left > 3000 {
			t.Errorf("%q: the upstream was told %d ms left, want about the whole total (3000)", v, left)
		}
		// at info, so an operator sees callers sending junk
		if e := g.lastEntry(); !strings.Contains(e.raw, `"deadline_invalid":true`) || e.Level != "info" {
			t.Errorf("%q: log entry %s, want deadline_invalid at info", v, e.raw)
		}
	}
}

// secondsLeft is how send writes what is left by default: seconds with
// three decimals.
var secondsLeft = regexp.MustCompile(`^[0-9]+\.[0-9]{3}$`)

func TestDeadlineSendUnitsAndOff(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 10*time.Millisecond)
	})
	call := func(g *gateway, caller string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/api", nil)
		if caller != "" {
			req.Header.Set("X-Request-Timeout", caller)
		}
		res, _ := g.do(req)
		expect(t, res, http.StatusOK, "ok")
	}

	// the header read and sent alike: a second gateway reading it caps
	// at the same instant, not 1000 times later
	g := loadGateway(t, hedgeSite(up.addr, "deadline {\n header X-Request-Timeout\n send X-Request-Timeout\n }"))
	call(g, "2.5")
	sent := up.header(0, "X-Request-Timeout")
	if left, err := strconv.ParseFloat(sent, 64); !secondsLeft.MatchString(sent) || err != nil || left < 2 || left > 2.5 {
		t.Errorf("a caller's 2.5 went on as %q, want the seconds left (2.000 to 2.500)", sent)
	}

	// whole milliseconds when asked for
	g = loadGateway(t, hedgeSite(up.addr, "deadline {\n send X-Left-Ms ms\n }"))
	call(g, "2.5")
	if ms, err := strconv.Atoi(up.header(1, "X-Left-Ms")); err != nil || ms < 2000 || ms > 2500 {
		t.Errorf("send ms wrote %q, want 2000 to 2500", up.header(1, "X-Left-Ms"))
	}

	// send off sends nothing, and names no header Off
	g = loadGateway(t, hedgeSite(up.addr, "timeouts {\n total 3s\n }\n deadline {\n send off\n }"))
	call(g, "")
	if v := up.header(2, "Off"); v != "" {
		t.Errorf("send off sent a header Off: %q", v)
	}

	// send without header: what is left of total, however the caller's
	// header reads
	g = loadGateway(t, hedgeSite(up.addr, "timeouts {\n total 3s\n }\n deadline {\n header off\n send X-Left\n }"))
	call(g, "0.001")
	sent = up.header(3, "X-Left")
	if left, err := strconv.ParseFloat(sent, 64); !secondsLeft.MatchString(sent) || err != nil || left < 2.5 || left > 3 {
		t.Errorf("with header off, X-Left %q, want about total (2.500 to 3.000)", sent)
	}
}

func TestDeadlineOfAGRPCCall(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, time.Second)
	})
	g := loadGateway(t, hedgeSite(up.addr, "deadline"))
	req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/pkg.Service/Method", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Grpc-Timeout", "200m")
	start := time.Now()
	res, _ := g.do(req)
	expect(t, res, http.StatusGatewayTimeout, "total_timeout")
	if took := time.Since(start); took > 800*time.Millisecond {
		t.Fatalf("took %v with grpc-timeout 200m", took)
	}
	got := up.header(0, "Grpc-Timeout")
	ms, err := strconv.Atoi(strings.TrimSuffix(got, "m"))
	if !strings.HasSuffix(got, "m") || err != nil || ms <= 0 || ms > 200 {
		t.Fatalf("the upstream got grpc-timeout %q, want what was left: 1m to 200m", got)
	}

	// too large for a duration, yet valid: no cap, and the upstream is
	// told what is left of total
	fast := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, time.Millisecond)
	})
	g = loadGateway(t, hedgeSite(fast.addr, "timeouts {\n total 5s\n }\n deadline"))
	for i, v := range []string{"2562047H", "2562048H", "99999999H"} {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/pkg.Service/Method", strings.NewReader("\x00\x00\x00\x00\x00"))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Grpc-Timeout", v)
		res, _ := g.do(req)
		expect(t, res, http.StatusOK, "ok")
		got := fast.header(i, "Grpc-Timeout")
		if ms, err := strconv.Atoi(strings.TrimSuffix(got, "m")); !strings.HasSuffix(got, "m") || err != nil || ms < 4000 || ms > 5000 {
			t.Errorf("grpc-timeout %s: the upstream got %q, want what is left of total (4000m to 5000m)", v, got)
		}
		if e := g.lastEntry(); strings.Contains(e.raw, "deadline_invalid") {
			t.Errorf("grpc-timeout %s is valid: log entry %s", v, e.raw)
		}
	}
}

// Many hedged requests at once, winners and losers racing every way:
// every request gets one whole answer, and every attempt ends.
func TestHedgeUnderLoad(t *testing.T) {
	var n atomic.Int64
	up := startTail(t, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		d := time.Duration(n.Add(1)%7) * 3 * time.Millisecond
		if n.Load()%10 == 0 {
			d = 150 * time.Millisecond
		}
		return hold(w, r, d)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 5ms\n max 2\n }\n retry {\n budget off\n }"))
	var wg sync.WaitGroup
	var bad atomic.Int64
	for w := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://localhost:9080/load/%d/%d", w, i), nil)
				res, err := g.Client.Do(req)
				if err != nil {
					bad.Add(1)
					continue
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || res.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "after ") {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d of 200 hedged requests did not get one whole answer", bad.Load())
	}
	s := metricsScrape(t)
	won := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "won"})
	lost := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "lost"})
	t.Logf("%d arrivals for 200 requests; hedges won %v, lost %v; %d attempts canceled upstream", up.count(), won, lost, up.canceled.Load())
	if won <= 0 {
		t.Fatal("no hedge won against answers of up to 150ms after 5ms")
	}
	// every arrival past the first of each request is a hedge, which
	// ends won or lost (one canceled before it left counts too)
	poll(t, 3*time.Second, "every hedge counted", func() bool {
		s := metricsScrape(t)
		won := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "won"})
		lost := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "lost"})
		return int(won+max(lost, 0)) >= up.count()-200
	})
	poll(t, 3*time.Second, "every slot given back (pool_in_flight 0)", func() bool {
		return metricsValue(metricsScrape(t), "caddy_resilient_pool_in_flight", map[string]string{"upstream": up.addr}) == 0
	})
}

// Hundreds of hedged requests, the upstream fast, slow, failing or
// stuck per request as a fixed seed draws it, so hedges win and lose
// every way: the upstream's own count of requests, attempts_total, the
// log's tries and {http.resilient.attempts} agree.
func TestHedgedAttemptsAgreeEverywhere(t *testing.T) {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(2013, 74)) // The Tail at Scale: 2013, 74 ms
	up := startTail(t, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		p := rng.IntN(100)
		mu.Unlock()
		switch {
		case p < 8: // fails at once
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		case p < 14: // fails slowly
			select {
			case <-time.After(25 * time.Millisecond):
				w.WriteHeader(http.StatusServiceUnavailable)
				return true
			case <-r.Context().Done():
				return false
			}
		case p < 26: // slow
			return hold(w, r, 40*time.Millisecond)
		case p < 31: // stuck
			return hold(w, r, 300*time.Millisecond)
		}
		return hold(w, r, time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 10ms\n max 2\n }\n retry {\n budget off\n }\n breaker off"))

	const requests, workers = 300, 6
	var wg sync.WaitGroup
	var placeholders, bad atomic.Int64
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				res, err := g.Client.Get(fmt.Sprintf("http://localhost:9080/r/%d", i))
				if err != nil {
					bad.Add(1)
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				n, err := strconv.Atoi(res.Header.Get("X-Attempts"))
				if err != nil || (res.StatusCode != http.StatusOK && res.StatusCode != http.StatusServiceUnavailable) {
					bad.Add(1)
					continue
				}
				placeholders.Add(int64(n))
			}
		}()
	}
	start := time.Now()
	for i := range requests {
		next <- i
	}
	close(next)
	wg.Wait()
	took := time.Since(start)
	if bad.Load() != 0 {
		t.Fatalf("%d of %d requests got no upstream answer with {http.resilient.attempts}", bad.Load(), requests)
	}

	entries := g.entries(requests)
	if len(entries) != requests {
		t.Fatalf("%d log entries for %d requests", len(entries), requests)
	}
	tries, logged, hedgeTries := 0, 0, 0
	for _, e := range entries {
		tries += len(e.Tries)
		logged += e.Attempts
		for _, tr := range e.Tries {
			if tr.Hedge {
				hedgeTries++
			}
		}
	}
	s := metricsScrape(t)
	counted := int(metricsSum(s, "caddy_resilient_attempts_total", map[string]string{"upstream": up.addr}))
	won := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "won"})
	lost := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "lost"})
	// a canceled loser's request may reach the upstream's handler a
	// moment after the gateway let go of it
	deadline := time.Now().Add(2 * time.Second)
	for up.count() < counted && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("%d requests in %v: upstream %d, attempts_total %d, log tries %d (%d hedges; attempts %d), placeholders %d; hedges won %v, lost %v",
		requests, took.Round(time.Millisecond), up.count(), counted, tries, hedgeTries, logged, placeholders.Load(), won, lost)
	if won <= 0 || lost <= 0 || hedgeTries == 0 {
		t.Fatalf("hedges won %v, lost %v: the draw did not race them both ways", won, lost)
	}
	if n := up.count(); counted != n || tries != n || logged != n || int(placeholders.Load()) != n {
		t.Fatalf("the upstream saw %d requests; attempts_total %d, log tries %d, log attempts %d, {http.resilient.attempts} %d",
			n, counted, tries, logged, placeholders.Load())
	}
}
