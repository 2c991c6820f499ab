package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

// The tail (SPEC §14) at its edges: caller deadlines across every way a
// request can go on, and hedges counted however they end.

// Promise (SPEC §14): "a caller's value caps `total` for that request
// (never raises it), and so bounds its retries and their waits too";
// README, Tail latency: "retries and their waits stop when the caller
// gives up". Caddy's lb_retries is a retry of the same request: a GET
// whose first upstream timed out moves to the next one (README, "it
// also moves a GET after any error of the transport"). The caller's
// 0.5 s must hold across that move: the request ends about 0.5 s after
// it came, and the second upstream is never told more than what is left.
func TestDeadlineHoldsAcrossLBRetries(t *testing.T) {
	stuck := func(n int, w http.ResponseWriter, r *http.Request) bool { return hold(w, r, 5*time.Second) }
	a, b := startTail(t, stuck), startTail(t, stuck)
	g := loadGateway(t, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s %s {
		lb_policy round_robin
		lb_retries 1
		lb_try_interval 10ms
		transport resilient {
			deadline {
				send X-Request-Timeout
			}
		}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`, a.addr, b.addr))
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/quote", nil)
	req.Header.Set("X-Request-Timeout", "0.5")
	start := time.Now()
	res, _ := g.do(req)
	took := time.Since(start)
	t.Logf("%d %s after %v; arrivals: a %d, b %d", res.StatusCode, res.Header.Get("X-Outcome"), took, a.count(), b.count())
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", res.StatusCode)
	}
	// whichever upstream came second was told what was left of the
	// caller's 0.5 s when its request was sent
	var told []string
	for _, u := range []*tailUpstream{a, b} {
		u.mu.Lock()
		for i, at := range u.at {
			left, _ := strconv.ParseFloat(u.headers[i].Get("X-Request-Timeout"), 64)
			told = append(told, fmt.Sprintf("%s at +%v told %.3f", u.addr, at.Sub(start).Round(time.Millisecond), left))
			if end := at.Sub(start) + time.Duration(left*float64(time.Second)); end > 550*time.Millisecond {
				t.Errorf("an upstream got the request %v after the caller's, told %.3f s were left: the caller's 0.5 s ran out %v later than it said",
					at.Sub(start).Round(time.Millisecond), left, (end - 500*time.Millisecond).Round(time.Millisecond))
			}
		}
		u.mu.Unlock()
	}
	t.Logf("%s", strings.Join(told, "; "))
	if took > 850*time.Millisecond {
		t.Errorf("a caller that gave 0.5 s got its answer after %v", took)
	}
}

// Promise (SPEC §14): "a caller's value caps `total` for that request
// (never raises it)"; README: "a caller that says how long it will wait
// caps `total` ... never raises it". The caller's value is how long it
// will wait from when it sent the request, its own slow upload included:
// a PUT whose body arrives 600 ms after its headers, with 0.5 s given,
// must not be answered (or kept going upstream) a whole second later.
func TestDeadlineIsTheCallersEvenWhileItsBodyIsSlow(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 5*time.Second)
	})
	g := loadGateway(t, hedgeSite(up.addr, "deadline"))
	pr, pw := io.Pipe()
	go func() {
		io.WriteString(pw, "part one, ")
		time.Sleep(600 * time.Millisecond)
		io.WriteString(pw, "part two")
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPut, "http://localhost:9080/doc", pr)
	req.Header.Set("X-Request-Timeout", "0.5")
	start := time.Now()
	res, _ := g.do(req)
	took := time.Since(start)
	t.Logf("%d %s after %v", res.StatusCode, res.Header.Get("X-Outcome"), took)
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", res.StatusCode)
	}
	if took > 900*time.Millisecond {
		t.Errorf("a caller that gave 0.5 s got its 504 after %v: the time its body took was added to its deadline", took)
	}
}

// Promise (SPEC §14): "Every attempt that reached the upstream, hedges
// that lost included, is counted exactly once in `attempts_total`,
// appears in the log's `tries` ... and in `{http.resilient.attempts}`:
// the metrics, the log and the upstream's own count agree." README:
// "A hedge canceled before any byte of it went out ... never reached the
// upstream: it is counted as `lost` only". A hedge whose own connection
// was refused did not reach the upstream either: the upstream counts
// one request, and so must the gateway.
func TestHedgeRefusedConnectionIsNoAttempt(t *testing.T) {
	ln := freshLoopback(t)
	addr := ln.Addr().String()
	var requests atomic.Int64
	go func() {
		c, err := ln.Accept()
		ln.Close() // every later connection is refused
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		c.Read(buf)
		requests.Add(1)
		time.Sleep(200 * time.Millisecond) // slow: the hedge goes out meanwhile
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfirst")
	}()
	t.Cleanup(func() { ln.Close() })
	g := loadGateway(t, hedgeSite(addr, "hedge {\n after 30ms\n }\n breaker off"))
	res, body := g.get("/a")
	expect(t, res, http.StatusOK, "ok")
	if body != "first" {
		t.Fatalf("body %q", body)
	}
	e := g.lastEntry()
	s := metricsScrape(t)
	counted := metricsSum(s, "caddy_resilient_attempts_total", map[string]string{"upstream": addr})
	t.Logf("upstream got %d request; X-Attempts %s; attempts_total %v; log %s", requests.Load(), res.Header.Get("X-Attempts"), counted, e.raw)
	if n := requests.Load(); res.Header.Get("X-Attempts") != fmt.Sprint(n) || e.Attempts != int(n) || int(counted) != int(n) {
		t.Errorf("the upstream got %d request; {http.resilient.attempts} %s, log attempts %d, attempts_total %v: a hedge whose connection was refused counted as an attempt",
			n, res.Header.Get("X-Attempts"), e.Attempts, counted)
	}
}

// Promise (SPEC §14): hedges_total `won` is "a hedge's answer was used".
// When the client leaves in the middle of a race, no answer is used at
// all: no hedge won. (Which of the two canceled attempts ends last is
// chance: eight races.)
func TestHedgeNoneWonWhenTheClientLeaves(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 5*time.Second)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 30ms\n }"))
	for i := range 8 {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://localhost:9080/leave/%d", i), nil)
		go func() {
			poll(t, 2*time.Second, "the hedge to arrive", func() bool { return up.count() == 2*(i+1) })
			time.Sleep(10 * time.Millisecond)
			cancel()
		}()
		if res, err := g.Client.Do(req); err == nil {
			res.Body.Close()
			t.Fatalf("status %d: the client left, want no answer", res.StatusCode)
		}
		poll(t, 2*time.Second, "both attempts to end upstream", func() bool { return up.canceled.Load() == int64(2*(i+1)) })
		if e := g.entries(i + 1); len(e) != i+1 || e[i].Outcome != "canceled" {
			t.Fatalf("log entry %d missing or not canceled", i)
		}
	}
	won := metricsValue(metricsScrape(t), "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "won"})
	lost := metricsValue(metricsScrape(t), "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "lost"})
	t.Logf("8 requests whose clients left mid-race: hedges_total won %v, lost %v", won, lost)
	if won > 0 {
		t.Errorf("hedges_total{won} = %v after 8 requests whose clients left: no hedge's answer was used", won)
	}
}

// Promise (SPEC §14): hedges_total `won` is "a hedge's answer was used".
// When the first attempt and its hedge both time out (each its own
// attempt timeout, the hedge's last), no answer came from anyone: no
// hedge won.
func TestHedgeNoneWonWhenNoAttemptAnswers(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 5*time.Second)
	})
	g := loadGateway(t, hedgeSite(up.addr, "timeouts {\n attempt 200ms\n }\n hedge {\n after 30ms\n }"))
	res, _ := g.get("/hang")
	expect(t, res, http.StatusGatewayTimeout, "attempt_timeout")
	e := g.lastEntry()
	s := metricsScrape(t)
	won := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "won"})
	t.Logf("log %s; hedges_total{won} %v", e.raw, won)
	if won > 0 {
		t.Errorf("hedges_total{won} = %v for a request that got no answer from any attempt", won)
	}
}

// tryOutcomes lists the outcomes of a log entry's tries, hedges marked.
func tryOutcomes(e logEntry) string {
	var out []string
	for _, tr := range e.Tries {
		s := tr.Outcome
		if tr.Status != 0 {
			s += "/" + strconv.Itoa(tr.Status)
		}
		if tr.Hedge {
			s += "(h)"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// Holds (SPEC §14: "with `max 2` or `3`, another after each further
// `after` ... when all fail, the last failure goes to the normal retry
// decision ... Hedges do not use up `attempts`"): max 3, every hedge
// failing at once, the first attempt failing last, then a retry that
// works. The upstream's count, attempts_total, the log and the
// placeholder agree, and hedges_total counts every hedge once.
func TestHedgeMaxThreeAllFailingThenARetry(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		switch {
		case n == 1: // the first attempt: fails after the hedges did
			select {
			case <-time.After(150 * time.Millisecond):
			case <-r.Context().Done():
				return false
			}
			w.WriteHeader(http.StatusBadGateway)
			return true
		case n <= 4: // three hedges, each failing at once
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		io.WriteString(w, "retry")
		return true
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 20ms\n max 3\n }\n retry {\n attempts 2\n backoff 5ms 10ms\n budget off\n }\n breaker off"))
	res, body := g.get("/all-fail")
	expect(t, res, http.StatusOK, "ok")
	if body != "retry" {
		t.Fatalf("body %q, want the retry's", body)
	}
	e := g.lastEntry()
	s := metricsScrape(t)
	counted := metricsSum(s, "caddy_resilient_attempts_total", map[string]string{"upstream": up.addr})
	lost := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "lost"})
	won := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "won"})
	t.Logf("upstream %d; X-Attempts %s; attempts_total %v; tries %s; won %v lost %v", up.count(), res.Header.Get("X-Attempts"), counted, tryOutcomes(e), won, lost)
	n := up.count()
	if n != 5 || res.Header.Get("X-Attempts") != "5" || e.Attempts != 5 || len(e.Tries) != 5 || int(counted) != 5 {
		t.Errorf("upstream %d; X-Attempts %s, log attempts %d (%d tries), attempts_total %v: want 5 everywhere", n, res.Header.Get("X-Attempts"), e.Attempts, len(e.Tries), counted)
	}
	if max(won, 0)+max(lost, 0) != 3 {
		t.Errorf("hedges_total won %v + lost %v for 3 hedges", won, lost)
	}
}

// Holds: a hedge whose connection is reset after the upstream read it
// loses to the first attempt's answer, and is counted once everywhere.
func TestHedgeResetLoserIsCounted(t *testing.T) {
	raw := startRaw(t, func(n int64, c net.Conn, req *http.Request) {
		if n == 1 {
			time.Sleep(150 * time.Millisecond)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
			return
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a clean close
		}
	})
	g := loadGateway(t, hedgeSite(raw.addr, "hedge {\n after 30ms\n }\n breaker off"))
	res, body := g.get("/reset")
	expect(t, res, http.StatusOK, "ok")
	if body != "first" {
		t.Fatalf("body %q", body)
	}
	e := g.lastEntry()
	counted := metricsSum(metricsScrape(t), "caddy_resilient_attempts_total", map[string]string{"upstream": raw.addr})
	t.Logf("upstream %d; X-Attempts %s; attempts_total %v; tries %s", raw.requests.Load(), res.Header.Get("X-Attempts"), counted, tryOutcomes(e))
	if n := raw.requests.Load(); n != 2 || res.Header.Get("X-Attempts") != "2" || e.Attempts != 2 || int(counted) != 2 {
		t.Errorf("upstream %d; X-Attempts %s, log attempts %d, attempts_total %v: want 2 everywhere", n, res.Header.Get("X-Attempts"), e.Attempts, counted)
	}
	if len(e.Tries) != 2 || !e.Tries[0].Hedge || e.Tries[0].Outcome != "reset" {
		t.Errorf("tries %s, want the hedge's reset, then the first's answer", tryOutcomes(e))
	}
}

// Holds (SPEC §5: "A body that the upstream cuts short ... ends the log
// entry and metrics as `reset`"; §6 executed `maybe` for "a cut
// answer"): a hedge that wins and then cuts its body.
func TestHedgeWinnerCutsItsBody(t *testing.T) {
	raw := startRaw(t, func(n int64, c net.Conn, req *http.Request) {
		if n == 1 {
			untilHangUp(c)
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
	})
	g := loadGateway(t, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient {
			hedge {
				after 30ms
			}
		}
	}
}
`, raw.addr))
	res, err := g.Client.Get("http://localhost:9080/cut")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	e := g.lastEntry()
	counted := metricsSum(metricsScrape(t), "caddy_resilient_attempts_total", map[string]string{"upstream": raw.addr})
	t.Logf("upstream %d; attempts_total %v; log %s", raw.requests.Load(), counted, e.raw)
	if e.Outcome != "reset" || e.Attempts != 2 || int(counted) != 2 || raw.requests.Load() != 2 {
		t.Errorf("outcome %s, attempts %d, attempts_total %v, upstream %d: want reset and 2 everywhere", e.Outcome, e.Attempts, counted, raw.requests.Load())
	}
}

// Holds: with max_conns 1, the first attempt holds the only slot, so
// its hedge is denied; nothing else is sent and nothing is left held.
func TestHedgeDeniedByThePool(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 100*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "pool {\n max_conns 1\n }\n hedge {\n after 20ms\n }\n rate_limit {\n rate 1/h\n burst 2\n max_wait 0\n }"))
	for _, p := range []string{"/a", "/b"} {
		res, _ := g.get(p)
		expect(t, res, http.StatusOK, "ok")
	}
	s := metricsScrape(t)
	if v := metricsValue(s, "caddy_resilient_hedges_total", map[string]string{"upstream": up.addr, "result": "denied"}); v != 2 || up.count() != 2 {
		t.Fatalf("hedges_total{denied} = %v, upstream %d: want 2 and 2", v, up.count())
	}
	if v := metricsValue(s, "caddy_resilient_pool_in_flight", map[string]string{"upstream": up.addr}); v != 0 {
		t.Errorf("pool_in_flight %v after both requests", v)
	}
}

// Promise (SPEC §4 step 3a): "With `obey_retry_after`, a 429 or 503
// carrying `Retry-After` (up to 1h) empties the bucket until then: every
// request to that upstream waits (up to `max_wait`) or is refused with
// `rate_limited` and that Retry-After, instead of being sent into a limit
// the upstream announced." A hedge is an attempt like any other (SPEC
// §14: it "takes ... a rate-limit token"): when the upstream answers it
// with 429 and Retry-After, the next request must not be sent.
func TestHedgeAnsweredWithRetryAfterPausesTheUpstream(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 2 { // the hedge: the provider's limit, announced
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		return hold(w, r, 150*time.Millisecond)
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			hedge {
				after 30ms
			}
			rate_limit {
				rate 100/s
				max_wait 0
			}
		}`))
	res, _ := g.get("/a")
	expect(t, res, http.StatusOK, "ok")
	if up.count() != 2 {
		t.Fatalf("%d arrivals, want the first attempt and its hedge", up.count())
	}
	t.Logf("first request: tries %s", tryOutcomes(g.lastEntry()))
	res, _ = g.get("/b")
	t.Logf("next request: %d %s; upstream arrivals %d", res.StatusCode, res.Header.Get("X-Outcome"), up.count())
	if res.Header.Get("X-Outcome") != "rate_limited" || up.count() != 2 {
		t.Errorf("after the upstream answered a hedge 429 with Retry-After: 30, the next request got %d %s and the upstream %d requests: it was sent into the announced limit",
			res.StatusCode, res.Header.Get("X-Outcome"), up.count())
	}
}

// Promise (SPEC §14): `after p95` is "a percentile ... of this upstream's
// recent time to response headers"; README: a first attempt "that has no
// response headers after the upstream's own 95th percentile of the last
// 10 s ... gets a second copy". Here one arrival in ten takes 250 ms, so
// the upstream's own p95 is about 250 ms: a hedge that goes out 10-20 ms
// after the first attempt is not waiting for the p95. (The attempts a
// hedge beats are canceled, and their times never reach the window, so
// the window forgets the tail it is meant to measure.)
func TestHedgeAfterP95IsTheUpstreamsP95(t *testing.T) {
	var arrivals atomic.Int64
	up := startTail(t, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		if arrivals.Add(1)%10 == 0 {
			return hold(w, r, 250*time.Millisecond)
		}
		return hold(w, r, 2*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after p95\n }\n retry {\n budget off\n }\n breaker off"))
	var wg sync.WaitGroup
	next := make(chan int)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				res, err := g.Client.Get(fmt.Sprintf("http://localhost:9080/r/%d", i))
				if err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}
		}()
	}
	start := time.Now()
	for i := 0; i < 400 && time.Since(start) < 5*time.Second; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	requests := len(g.entries(1))
	es := g.entries(requests)
	hedged, early := 0, 0
	var gaps []time.Duration
	for _, e := range es {
		for _, tr := range e.Tries {
			if tr.Hedge {
				hedged++
			}
		}
	}
	// the hedge delay, measured alone: a slow first attempt, its hedge fast
	for range 5 {
		before := up.count()
		arrivals.Store(9) // the next arrival is slow
		g.get("/probe")
		up.mu.Lock()
		if len(up.at) > before+1 {
			gaps = append(gaps, up.at[before+1].Sub(up.at[before]).Round(time.Millisecond))
			if up.at[before+1].Sub(up.at[before]) < 100*time.Millisecond {
				early++
			}
		}
		up.mu.Unlock()
	}
	t.Logf("%d requests in %v, %d upstream arrivals, %d hedges (%.1f%%); hedge delays for a slow first attempt: %v",
		requests, time.Since(start).Round(time.Millisecond), up.count(), hedged, 100*float64(hedged)/float64(max(requests, 1)), gaps)
	if early > 0 {
		t.Errorf("one arrival in ten takes 250 ms (the upstream's p95), yet %d of 5 slow first attempts were hedged after %v", early, gaps)
	}
}

// twoGateways is a gateway on :9080 in front of a second one on :9081,
// in front of up, each reading and sending the caller's deadline in the
// same header.
func twoGateways(up string) string {
	return fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy localhost:9081 {
		transport resilient {
			deadline {
				header X-Request-Timeout
				send X-Request-Timeout
			}
		}
		header_down X-Outer {http.resilient.outcome}
	}
	handle_errors {
		header X-Outer {http.resilient.outcome}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
http://localhost:9081 {
	reverse_proxy %s {
		transport resilient {
			deadline {
				header X-Request-Timeout
				send X-Request-Timeout
			}
			retry {
				backoff 200ms 200ms
			}
		}
	}
	handle_errors {
		header X-Inner {http.resilient.outcome}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`, up)
}

// Holds (SPEC §14: `send` writes "by default in the unit `header` reads
// (seconds, three decimals), so that a second gateway reading the same
// header caps at the same instant", and on every attempt "what is left"):
// two gateways in a row, the second retrying a 503 after 200 ms; every
// attempt the upstream gets is told an instant within a hop of the
// caller's. A gateway that sent seconds as milliseconds, or what was
// given rather than what is left, would tell the retry an instant at
// least 100 ms (the backoff's least) too late; the bound leaves the hops
// 50 ms, for a busy machine.
func TestDeadlineTwoGatewaysCapAtOneInstant(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return hold(w, r, 5*time.Second)
	})
	g := loadGateway(t, twoGateways(up.addr))
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/q", nil)
	req.Header.Set("X-Request-Timeout", "0.4")
	start := time.Now()
	res, _ := g.do(req)
	took := time.Since(start)
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d", res.StatusCode)
	}
	up.mu.Lock()
	at, headers := slices.Clone(up.at), slices.Clone(up.headers)
	up.mu.Unlock()
	if len(at) != 2 {
		t.Fatalf("the upstream got %d requests, want the first and one retry", len(at))
	}
	for i := range at {
		told := headers[i].Get("X-Request-Timeout")
		left, err := strconv.ParseFloat(told, 64)
		end := at[i].Sub(start) + time.Duration(left*float64(time.Second))
		t.Logf("504 (outer %q, inner %q) after %v; attempt %d told %q at +%v: the caller's instant as the upstream sees it +%v",
			res.Header.Get("X-Outer"), res.Header.Get("X-Inner"), took, i+1, told, at[i].Sub(start), end)
		if err != nil || !secondsLeft.MatchString(told) || end > 450*time.Millisecond || end < 390*time.Millisecond {
			t.Errorf("attempt %d told %q at +%v: an instant at +%v, want within a hop of the caller's 400ms", i+1, told, at[i].Sub(start), end)
		}
	}
	if took > 550*time.Millisecond {
		t.Errorf("took %v for a caller's 0.4 s through two gateways", took)
	}
}

// Holds (SPEC §14: "`grpc on` applies to requests with `Content-Type:
// application/grpc…` over any HTTP version: their `grpc-timeout` caps
// `total` the same way and is rewritten on each attempt to what is left
// (any valid gRPC unit); a junk `grpc-timeout` is ignored. When less
// than 1 ms is left, the request ends `total_timeout` (504) at once,
// nothing sent."): every unit and the limits, HTTP/2 on both legs.
func TestDeadlineGRPCEveryUnitOverHTTP2(t *testing.T) {
	var mu sync.Mutex
	var got []string
	ln := freshLoopback(t)
	srv := &http.Server{Handler: h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, fmt.Sprintf("HTTP/%d %s", r.ProtoMajor, r.Header.Get("Grpc-Timeout")))
		mu.Unlock()
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Grpc-Status", "0")
	}), &http2.Server{})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	g := loadGatewayWith(t, `servers {
		protocols h1 h2 h2c
	}`, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient {
			versions h2c 2
			timeouts {
				total 20s
			}
			deadline
		}
		header_down X-Outcome {http.resilient.outcome}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`, addr))
	client := &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:9080")
		},
	}}
	call := func(timeout string) (int, string, string) {
		t.Helper()
		mu.Lock()
		before := len(got)
		mu.Unlock()
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/pkg.Svc/M", strings.NewReader("\x00\x00\x00\x00\x00"))
		req.Header.Set("Content-Type", "application/grpc+proto")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Grpc-Timeout", timeout)
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("grpc-timeout %s: %v", timeout, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		mu.Lock()
		defer mu.Unlock()
		sent := "(nothing sent)"
		if len(got) > before {
			sent = got[before]
		}
		return res.StatusCode, res.Header.Get("X-Outcome"), sent
	}
	// what the upstream must be told: at most the value, at least 80% of it
	for _, tc := range []struct {
		value    string
		min, max time.Duration
	}{
		{"300m", 250 * time.Millisecond, 300 * time.Millisecond},
		{"300000u", 250 * time.Millisecond, 300 * time.Millisecond},
		{"99999999n", 50 * time.Millisecond, 100 * time.Millisecond},
		{"1S", 900 * time.Millisecond, time.Second},
		{"2M", 19 * time.Second, 20 * time.Second}, // total is less
		{"1H", 19 * time.Second, 20 * time.Second},
		{"99999999H", 19 * time.Second, 20 * time.Second},
		{"00000002S", 1900 * time.Millisecond, 2 * time.Second},
	} {
		status, outcome, sent := call(tc.value)
		v := strings.TrimPrefix(sent, "HTTP/2 ")
		d, ok := grpcDuration(v)
		if status != http.StatusOK || outcome != "ok" || !strings.HasPrefix(sent, "HTTP/2 ") || !ok || d < tc.min || d > tc.max {
			t.Errorf("grpc-timeout %s: %d %s, upstream got %q, want HTTP/2 and %v to %v", tc.value, status, outcome, sent, tc.min, tc.max)
		}
		if e := g.lastEntry(); strings.Contains(e.raw, "deadline_invalid") {
			t.Errorf("grpc-timeout %s is valid: %s", tc.value, e.raw)
		}
	}
	for _, v := range []string{"0m", "0H", "999u", "00000000S"} {
		if status, outcome, sent := call(v); status != http.StatusGatewayTimeout || outcome != "total_timeout" || sent != "(nothing sent)" {
			t.Errorf("grpc-timeout %s: %d %s, upstream got %q; want 504 total_timeout, nothing sent", v, status, outcome, sent)
		}
	}
	for _, v := range []string{"123456789m", "1s", "1h", "m", "-1m", "1.5S", "+1S", "1 S", "0x1S"} {
		status, outcome, _ := call(v)
		e := g.lastEntry()
		if status != http.StatusOK || outcome != "ok" || !strings.Contains(e.raw, `"deadline_invalid":true`) || e.Level != "info" {
			t.Errorf("junk grpc-timeout %q: %d %s, log %s; want ok, deadline_invalid at info", v, status, outcome, e.raw)
		}
	}
}

// grpcDuration reads a grpc-timeout value.
func grpcDuration(v string) (time.Duration, bool) {
	if len(v) < 2 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if err != nil || unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// Promise (SPEC §14): "Every attempt that reached the upstream, hedges
// that lost included, is counted exactly once in `attempts_total`,
// appears in the log's `tries` ... and in `{http.resilient.attempts}`:
// the metrics, the log and the upstream's own count agree" (and §4 step
// 5: "every request the upstream receives is one of these attempts").
// Over HTTP/2 every attempt of every request shares one h2c connection:
// hedges going out 1 ms after their first attempt, many at once, some
// canceled as they start. The upstream's count of the requests it got
// must be the gateway's.
func TestHedgedAttemptsAgreeOverH2C(t *testing.T) {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(7, 4))
	var arrivals atomic.Int64
	ln := freshLoopback(t)
	srv := &http.Server{Handler: h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrivals.Add(1)
		mu.Lock()
		p := rng.IntN(100)
		mu.Unlock()
		switch {
		case p < 8:
			w.WriteHeader(http.StatusServiceUnavailable)
		case p < 14:
			select {
			case <-time.After(25 * time.Millisecond):
				w.WriteHeader(http.StatusServiceUnavailable)
			case <-r.Context().Done():
			}
		case p < 26:
			hold(w, r, 40*time.Millisecond)
		case p < 31:
			hold(w, r, 300*time.Millisecond)
		default:
			hold(w, r, time.Millisecond)
		}
	}), &http2.Server{})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	g := loadGateway(t, hedgeSite(addr, "versions h2c\n hedge {\n after 1ms\n max 3\n }\n retry {\n budget off\n }\n breaker off"))

	const requests, workers = 1500, 16
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
				if err != nil {
					bad.Add(1)
					continue
				}
				placeholders.Add(int64(n))
			}
		}()
	}
	for i := range requests {
		next <- i
	}
	close(next)
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d requests without {http.resilient.attempts}", bad.Load())
	}
	entries := g.entries(requests)
	tries, logged := 0, 0
	for _, e := range entries {
		tries += len(e.Tries)
		logged += e.Attempts
	}
	counted := int(metricsSum(metricsScrape(t), "caddy_resilient_attempts_total", map[string]string{"upstream": addr}))
	deadline := time.Now().Add(2 * time.Second)
	for int(arrivals.Load()) < counted && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	n := int(arrivals.Load())
	t.Logf("upstream %d, attempts_total %d, log tries %d, log attempts %d, placeholders %d", n, counted, tries, logged, placeholders.Load())
	if counted != n || logged != n || int(placeholders.Load()) != n {
		t.Errorf("the upstream saw %d requests; attempts_total %d, log attempts %d, {http.resilient.attempts} %d", n, counted, logged, placeholders.Load())
	}
}

// Holds (SPEC §14: junk "is ignored, and the log entry carries
// "deadline_invalid": true (at info ...)"; README adds `+1`, `0x1p3`,
// `1_0`): every kind of junk, and the odd valid forms.
func TestDeadlineJunkOfEveryKind(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 2*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "timeouts {\n total 3s\n }\n deadline {\n send X-Left ms\n }"))
	call := func(values ...string) (*http.Response, logEntry, int) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/api", nil)
		for _, v := range values {
			req.Header.Add("X-Request-Timeout", v)
		}
		before := up.count()
		res, _ := g.do(req)
		left := -1
		if up.count() > before {
			left, _ = strconv.Atoi(up.header(before, "X-Left"))
		}
		return res, g.lastEntry(), left
	}
	for _, v := range []string{"0x1p3", "0X10", "1_0", "1_000ms", "+1", "+1.5", "-0", " ", "1e", "1e+", ".", "e3", "1..5", "1.5.", "١", "1.5 s", "1.5ss", "Infinity", "nan", "0x1.8p1", "1e3ms", "\t-1\t"} {
		res, e, left := call(v)
		if res.StatusCode != http.StatusOK || !strings.Contains(e.raw, `"deadline_invalid":true`) || e.Level != "info" || left < 2500 {
			t.Errorf("%q: %d, told %d ms, log %s; want ok, the whole total, deadline_invalid at info", v, res.StatusCode, left, e.raw)
		}
	}
	// the header twice: which one? neither
	if res, e, left := call("0.1", "5"); res.StatusCode != http.StatusOK || !strings.Contains(e.raw, `"deadline_invalid":true`) || left < 2500 {
		t.Errorf("two values: %d, told %d ms, log %s", res.StatusCode, left, e.raw)
	}
	for _, tc := range []struct {
		v        string
		min, max int
	}{
		{"1.5", 1400, 1500}, {".5", 400, 500}, {"5.", 2500, 3000}, {"1E0", 900, 1000}, {"25e-1", 2400, 2500},
		{"1500ms", 1400, 1500}, {"1m30s", 2500, 3000}, {" 1.5\t", 1400, 1500}, {"1e308", 2500, 3000}, {"9223372037", 2500, 3000},
		{"0.7s", 600, 700},
	} {
		res, e, left := call(tc.v)
		if res.StatusCode != http.StatusOK || strings.Contains(e.raw, "deadline_invalid") || left < tc.min || left > tc.max {
			t.Errorf("%q: %d, told %d ms, log %s; want ok, %d to %d ms, valid", tc.v, res.StatusCode, left, e.raw, tc.min, tc.max)
		}
	}
	// valid, and nothing left: 504 at once, nothing sent
	for _, v := range []string{"0", "0.0009", "1e-400", "0s", "900us", "0.000"} {
		res, e, left := call(v)
		if res.StatusCode != http.StatusGatewayTimeout || left != -1 || strings.Contains(e.raw, "deadline_invalid") || e.Outcome != "total_timeout" {
			t.Errorf("%q: %d, told %d, log %s; want 504 total_timeout, nothing sent", v, res.StatusCode, left, e.raw)
		}
	}
}

// Holds: a hedge is told what is left when it goes out, not what was
// left when the first attempt did.
func TestDeadlineHedgeToldWhatIsLeftAtItsStart(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			return hold(w, r, 2*time.Second)
		}
		return hold(w, r, time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 100ms\n }\n deadline {\n send X-Request-Timeout\n }"))
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/q", nil)
	req.Header.Set("X-Request-Timeout", "1")
	res, _ := g.do(req)
	expect(t, res, http.StatusOK, "ok")
	first, _ := strconv.ParseFloat(up.header(0, "X-Request-Timeout"), 64)
	hedge, _ := strconv.ParseFloat(up.header(1, "X-Request-Timeout"), 64)
	up.mu.Lock()
	gap := up.at[1].Sub(up.at[0])
	up.mu.Unlock()
	if d := time.Duration((first - hedge) * float64(time.Second)); first > 1 || hedge > 0.91 || d < gap-5*time.Millisecond || d > gap+5*time.Millisecond {
		t.Errorf("first told %.3f, hedge %.3f, %v apart", first, hedge, gap)
	}
}

// Holds under -race: many hedged requests at once, with bodies, the
// deadline sent on each attempt, a rate limit and a pool in the way, so
// hedges are denied, win, lose and give tokens back concurrently.
func TestHedgeEverythingAtOnce(t *testing.T) {
	var n atomic.Int64
	up := startTail(t, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		switch k := n.Add(1); {
		case k%9 == 0:
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		case k%5 == 0:
			return hold(w, r, 60*time.Millisecond)
		default:
			return hold(w, r, time.Duration(k%4)*time.Millisecond)
		}
	})
	g := loadGateway(t, hedgeSite(up.addr, `hedge {
				after 5ms
				max 2
			}
			pool {
				max_conns 24
			}
			rate_limit {
				rate 4000/s
				burst 40
				max_wait 200ms
			}
			deadline {
				send X-Request-Timeout
			}`))
	var wg sync.WaitGroup
	var bad atomic.Int64
	for w := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				var body io.Reader
				method := http.MethodGet
				if i%2 == 1 {
					method, body = http.MethodPut, strings.NewReader(strings.Repeat("x", 1000+i))
				}
				req, _ := http.NewRequest(method, fmt.Sprintf("http://localhost:9080/all/%d/%d", w, i), body)
				req.Header.Set("X-Request-Timeout", "2")
				res, err := g.Client.Do(req)
				if err != nil {
					bad.Add(1)
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode >= 500 && res.StatusCode != http.StatusServiceUnavailable {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d of 300 requests failed", bad.Load())
	}
	poll(t, 3*time.Second, "every slot given back", func() bool {
		return metricsValue(metricsScrape(t), "caddy_resilient_pool_in_flight", map[string]string{"upstream": up.addr}) == 0
	})
}

// Promise (README, Tail latency): "A caller's value is an unsigned
// decimal number of seconds (`1.5`, `.5`, `1e3`) or a Go duration
// (`1500ms`, `1m30s`); one too large for a duration means no cap. A
// value that does not read ... is ignored, and the log entry says
// "deadline_invalid": true". `1e10` (seconds) is taken as no cap; a Go
// duration too large for a duration is just as valid, and must not be
// logged as junk a caller sent.
func TestDeadlineGoDurationTooLargeMeansNoCap(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 2*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "timeouts {\n total 3s\n }\n deadline {\n send X-Left ms\n }"))
	for i, v := range []string{"1e10", "2562048h", "9999999999h", "10000000000000000000ns"} {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/api", nil)
		req.Header.Set("X-Request-Timeout", v)
		res, _ := g.do(req)
		e := g.lastEntry()
		left, _ := strconv.Atoi(up.header(i, "X-Left"))
		if res.StatusCode != http.StatusOK || left < 2500 || strings.Contains(e.raw, "deadline_invalid") {
			t.Errorf("%q: %d, upstream told %d ms, log %s; want no cap, and no deadline_invalid", v, res.StatusCode, left, e.raw)
		}
	}
}

// Promise (SPEC §14): "The first answer that is not a failure in `on`
// wins; a failing attempt while another is still in flight just ends".
// A hedge that failed with a 503 whose body then stalls must not hold
// back the first attempt's good answer: the winner goes to the client
// when it comes, not after the loser's body was waited for.
func TestHedgeFailedLoserDoesNotDelayTheWinner(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 2 { // the hedge: a 503 whose body stalls
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "busy")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
			return true
		}
		return hold(w, r, 150*time.Millisecond)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 30ms\n }"))
	start := time.Now()
	res, body := g.get("/a")
	took := time.Since(start)
	expect(t, res, http.StatusOK, "ok")
	t.Logf("%q after %v; tries %s", body, took, tryOutcomes(g.lastEntry()))
	if took > 600*time.Millisecond {
		t.Errorf("the first attempt answered after 150ms, the client got it after %v: the failed hedge's stalled body was waited for", took)
	}
}

// Holds (SPEC §6): {http.resilient.executed} of hedged requests: the
// most any try tells.
func TestHedgeExecuted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hedge  func(w http.ResponseWriter, r *http.Request) bool
		first  func(w http.ResponseWriter, r *http.Request) bool
		status int
		want   string
	}{
		{"first wins, the hedge canceled", func(w http.ResponseWriter, r *http.Request) bool { return hold(w, r, 5*time.Second) },
			func(w http.ResponseWriter, r *http.Request) bool { return hold(w, r, 100*time.Millisecond) }, 200, "yes"},
		{"both 503", func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(503); return true },
			func(w http.ResponseWriter, r *http.Request) bool {
				time.Sleep(100 * time.Millisecond)
				w.WriteHeader(503)
				return true
			}, 503, "no"},
		{"the hedge reset after it was read, the first 503", func(w http.ResponseWriter, r *http.Request) bool {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			return true
		},
			func(w http.ResponseWriter, r *http.Request) bool {
				time.Sleep(100 * time.Millisecond)
				w.WriteHeader(503)
				return true
			}, 503, "maybe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
				if n == 2 {
					return tc.hedge(w, r)
				}
				return tc.first(w, r)
			})
			g := loadGateway(t, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient {
			hedge {
				after 30ms
			}
			retry off
		}
		header_down X-Executed {http.resilient.executed}
	}
}
`, up.addr))
			res, _ := g.get("/x")
			if res.StatusCode != tc.status || res.Header.Get("X-Executed") != tc.want || up.count() != 2 {
				t.Errorf("%d executed %q after %d arrivals, want %d %q; tries %s", res.StatusCode, res.Header.Get("X-Executed"), up.count(), tc.status, tc.want, tryOutcomes(g.lastEntry()))
			}
		})
	}
}

// Promise (SPEC §14): "When less than 1 ms is left, the request ends
// `total_timeout` (504) at once, nothing sent", and "Every attempt that
// reached the upstream ... is counted exactly once ...: the metrics, the
// log and the upstream's own count agree". A hedge due when less than
// a millisecond of the caller's deadline is left goes out all the same:
// it reaches nothing, yet is logged and counted as an attempt, and the
// breaker counts its timeout as a failure of the upstream (two failures
// for a request the upstream saw once). Ten requests whose hedge falls
// due 0.1 to 0.9 ms before the caller's deadline.
func TestHedgeNotSentWithNoTimeLeft(t *testing.T) {
	up := startTail(t, func(n int, w http.ResponseWriter, r *http.Request) bool {
		return hold(w, r, 2*time.Second)
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 30ms\n }\n deadline {\n send X-Request-Timeout\n }\n breaker {\n consecutive_failures 0\n min_requests 1000\n }"))
	const requests = 10
	for i := range requests {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://localhost:9080/q/%d", i), nil)
		req.Header.Set("X-Request-Timeout", "0.0309")
		res, _ := g.do(req)
		if res.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	time.Sleep(50 * time.Millisecond)
	es := g.entries(requests)
	logged, hedges := 0, 0
	for _, e := range es {
		logged += e.Attempts
		for _, tr := range e.Tries {
			if tr.Hedge {
				hedges++
			}
		}
	}
	counted := int(metricsSum(metricsScrape(t), "caddy_resilient_attempts_total", map[string]string{"upstream": up.addr}))
	b := adminBreakerOf(t, up.addr)
	t.Logf("%d requests: upstream %d arrivals; log attempts %d (%d hedges); attempts_total %d; breaker failures %d; e.g. %s",
		requests, up.count(), logged, hedges, counted, b.Counts.Failures, es[0].raw)
	if n := up.count(); logged != n || counted != n {
		t.Errorf("the upstream got %d requests; the log says %d attempts, attempts_total %d: hedges sent with no time left counted as attempts", n, logged, counted)
	}
	if b.Counts.Failures > up.count() {
		t.Errorf("breaker failures %d for %d requests the upstream got", b.Counts.Failures, up.count())
	}
	nothingLeft := 0
	for i := range up.count() {
		if up.header(i, "X-Request-Timeout") == "0.000" {
			nothingLeft++
		}
	}
	if nothingLeft > 0 {
		t.Errorf("%d requests reached the upstream told 0.000 s were left: with less than 1 ms left nothing is to be sent", nothingLeft)
	}
}

// Holds (SPEC §14: hedged "with the body absent or wholly received and
// kept within `max_body`"): a PUT of exactly max_body is hedged and the
// hedge carries the whole body; one byte more is not hedged.
func TestHedgePUTBodyAtMaxBody(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		n := len(bodies)
		mu.Unlock()
		if n%2 == 1 { // each first attempt is slow
			hold(w, r, 300*time.Millisecond)
			return
		}
		io.WriteString(w, "hedge")
	})
	g := loadGateway(t, hedgeSite(up.addr, "hedge {\n after 30ms\n }\n retry {\n max_body 1KiB\n }"))
	body := strings.Repeat("b", 1024)
	req, _ := http.NewRequest(http.MethodPut, "http://localhost:9080/doc", strings.NewReader(body))
	res, got := g.do(req)
	expect(t, res, http.StatusOK, "ok")
	mu.Lock()
	n, whole := len(bodies), len(bodies) == 2 && bodies[0] == body && bodies[1] == body
	mu.Unlock()
	if got != "hedge" || !whole {
		t.Errorf("PUT of max_body: answer %q, %d arrivals, each with the whole body: %v", got, n, whole)
	}
	req, _ = http.NewRequest(http.MethodPut, "http://localhost:9080/doc", strings.NewReader(body+"b"))
	res, _ = g.do(req)
	expect(t, res, http.StatusOK, "ok")
	mu.Lock()
	n = len(bodies)
	mu.Unlock()
	if n != 3 {
		t.Errorf("a PUT of max_body+1 reached the upstream %d times, want once", n-2)
	}
}
