package integration

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// SPEC §4 "Several upstreams", §6, §13 and §15 where they meet Caddy's
// lb_retries, lb_retry_match, HTTP/2 over TLS and the answers the
// transport gives itself.

// bodyUpstream counts requests and remembers the bodies it read.
type bodyUpstream struct {
	*upstream
	mu     sync.Mutex
	bodies []string
}

func startBodyUpstream(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, body string)) *bodyUpstream {
	b := &bodyUpstream{}
	b.upstream = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.bodies = append(b.bodies, string(data))
		b.mu.Unlock()
		answer(w, r, string(data))
	})
	return b
}

func (b *bodyUpstream) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.bodies...)
}

// SPEC §4: a request that never reached its upstream (connect refused)
// is moved by lb_retries to another, whatever its method, and arrives
// there once, with its whole body; with or without fallback (which the
// exchange now holds apart), after the transport's own retries of the
// refused connect.
func TestLbFallbackRefusedUpstreamMovesPostWithItsBody(t *testing.T) {
	for _, tc := range []struct {
		name, transport string
		size            int
	}{
		{"plain", "breaker off", 11},
		{"fallback", "breaker off\nfallback", 11},
		{"retries", "breaker off\nretry {\nbackoff 1ms 2ms\n}", 11},
		{"large", "breaker off\nretry {\nbackoff 1ms 2ms\n}\nfallback", 300 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good := startBodyUpstream(t, func(w http.ResponseWriter, r *http.Request, body string) {
				fmt.Fprintf(w, "got %d", len(body))
			})
			dead := closedPort(t)
			// round_robin picks the second listed first: the refused one
			g := loadGateway(t, verdictSite(good.addr+" "+dead, "lb_policy round_robin\nlb_retries 1", tc.transport))
			body := strings.Repeat("p", tc.size)
			res, got := post(t, g, "/orders", body)
			if res.StatusCode != 200 || got != fmt.Sprintf("got %d", tc.size) {
				t.Fatalf("POST after a refused first upstream: %d %q %+v, want 200 from the second", res.StatusCode, got, verdictOf(res))
			}
			if bs := good.got(); len(bs) != 1 || bs[0] != body {
				t.Fatalf("second upstream got %d requests (lengths %v), want one with the whole body", len(bs), lens(bs))
			}
		})
	}
}

func lens(bs []string) []int {
	var n []int
	for _, b := range bs {
		n = append(n, len(b))
	}
	return n
}

// README "Failover to another upstream": a request whose body was read
// is not offered to lb_retries. A POST the first upstream read whole and
// then reset must end there (502, executed maybe), never reach the
// second, with or without fallback.
func TestLbFallbackReadPostResetIsNotMoved(t *testing.T) {
	for _, transport := range []string{"breaker off", "breaker off\nfallback"} {
		t.Run(strings.ReplaceAll(transport, "\n", "_"), func(t *testing.T) {
			first := startBodyUpstream(t, func(w http.ResponseWriter, r *http.Request, body string) { hangUp(w) })
			second := startBodyUpstream(t, func(w http.ResponseWriter, r *http.Request, body string) { io.WriteString(w, "second") })
			// round_robin picks the second listed first, then the first
			g := loadGateway(t, verdictSite(second.addr+" "+first.addr, "lb_policy round_robin\nlb_retries 1", transport))
			res, body := post(t, g, "/pay", "amount=10")
			if n := len(second.got()); n != 0 {
				t.Fatalf("the second upstream got the read POST %d times (answer %d %q %+v)", n, res.StatusCode, body, verdictOf(res))
			}
			if v := verdictOf(res); v.status != 502 || v.outcome != "reset" || v.executed != "maybe" {
				t.Fatalf("got %+v, want 502 reset maybe", v)
			}
			if bs := first.got(); len(bs) != 1 || bs[0] != "amount=10" {
				t.Fatalf("first upstream got %v, want the body once", bs)
			}
		})
	}
}

// flipCounting is an upstream whose mode (ok, reset, 503) is set by the
// test; healthy answers name the upstream.
type flipCounting struct {
	*upstream
	mode atomic.Value
}

func startNamed(t *testing.T, name string) *flipCounting {
	f := &flipCounting{}
	f.mode.Store("ok")
	f.upstream = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch f.mode.Load().(string) {
		case "reset":
			hangUp(w)
			return
		case "503":
			w.WriteHeader(503)
			return
		}
		fmt.Fprintf(w, "%s%d", name, f.count.Load())
	})
	return f
}

// fallbackLB is a site with two upstreams, round_robin (b first, then
// a, then b), lb_retries 1, the lb options given, and the transport
// given (a fallback, no retries or breaker of its own).
func fallbackLB(a, b, lbOptions, transport string) string {
	return edgeSite(a+" "+b, "lb_policy round_robin\nlb_retries 1\n"+lbOptions, transport)
}

const fallbackNoRetry = "breaker off\nretry {\nattempts 1\n}\nfallback"

// SPEC §15 with §4: a GET that lb_retry_match does not match is not
// moved by Caddy on a reset (tryAgain), so it gets the kept answer; one
// it matches is moved and gets a fresh answer from the other upstream.
func TestLbFallbackRetryMatchDecidesBetweenStaleAndFresh(t *testing.T) {
	for _, tc := range []struct {
		name, match, want, fb string
	}{
		{"not matched", "lb_retry_match {\nmethod POST\n}", "B1", "stale"},
		{"matched", "lb_retry_match {\nmethod GET\n}", "B2", ""},
		{"expression on transport error", "lb_retry_match {\nexpression `{rp.is_transport_error} == true`\n}", "B2", ""},
		{"expression not matched", "lb_retry_match {\nexpression `{http.request.uri.path} == '/nope'`\n}", "B1", "stale"},
		{"no match: GET moves", "", "B2", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startNamed(t, "A"), startNamed(t, "B")
			g := loadGateway(t, fallbackLB(a.addr, b.addr, tc.match, fallbackNoRetry))
			if res, body := getHost(t, g, "", "/rates"); res.StatusCode != 200 || body != "B1" {
				t.Fatalf("healthy: %d %q", res.StatusCode, body)
			}
			a.mode.Store("reset")
			res, body := getHost(t, g, "", "/rates")
			if res.StatusCode != 200 || body != tc.want || res.Header.Get("X-Fallback") != tc.fb {
				t.Fatalf("A reset: %d %q fallback %q outcome %q, want %q fallback %q (A asked %d times)",
					res.StatusCode, body, res.Header.Get("X-Fallback"), res.Header.Get("X-Outcome"), tc.want, tc.fb, a.count.Load())
			}
			if n := a.count.Load(); n != 1 {
				t.Fatalf("A asked %d times, want once", n)
			}
		})
	}
}

// SPEC §15 "When it is served: the request would end with an outcome or
// status in on". With a response-based lb_retry_match (Caddy 2.11: an
// expression on {rp.status_code}), a 503 of one upstream does not end
// the request: Caddy moves it to the other, and a fresh answer is worth
// more than a kept one (module.go lbMovesOn). The kept answer must not
// take the retry's place. The control, without fallback, shows Caddy
// moving the 503.
func TestLbFallbackResponseRetryMatchMovesBeforeTheFallback(t *testing.T) {
	match := "lb_retry_match {\nexpression `{rp.status_code} == 503`\n}"
	for _, tc := range []struct{ name, transport string }{
		{"control without fallback", "breaker off\nretry {\nattempts 1\n}"},
		{"fallback", fallbackNoRetry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startNamed(t, "A"), startNamed(t, "B")
			g := loadGateway(t, fallbackLB(a.addr, b.addr, match, tc.transport))
			if res, body := getHost(t, g, "", "/rates"); res.StatusCode != 200 || body != "B1" {
				t.Fatalf("healthy: %d %q", res.StatusCode, body)
			}
			a.mode.Store("503")
			res, body := getHost(t, g, "", "/rates")
			if res.StatusCode != 200 || body != "B2" {
				t.Fatalf("A answers 503, lb_retry_match moves 503s: got %d %q fallback %q outcome %q, want B's fresh answer B2 (A asked %d times)",
					res.StatusCode, body, res.Header.Get("X-Fallback"), res.Header.Get("X-Outcome"), a.count.Load())
			}
		})
	}
}

// attempt.go: ALPN read once per TLS connection. Many requests, several
// at once, over one HTTP/2 connection to a TLS upstream all succeed and
// are counted as executed; a POST the upstream resets on a reused HTTP/2
// connection ends as reset, maybe, sent once, never re-sent.
func TestAttemptHTTP2OverTLSReusedConnections(t *testing.T) {
	var conns, posts atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			w.WriteHeader(505)
			return
		}
		if r.Method == http.MethodPost {
			posts.Add(1)
			io.ReadAll(r.Body)
			panic(http.ErrAbortHandler) // RST_STREAM
		}
		io.WriteString(w, "h2 ok")
	}))
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "https://")
	g := loadGateway(t, verdictSite("https://"+addr, "", "tls_insecure_skip_verify\nbreaker off"))
	for i := range 3 {
		res, body := g.get("/one")
		if v := verdictOf(res); v.status != 200 || body != "h2 ok" || v.executed != "yes" || v.outcome != "ok" {
			t.Fatalf("GET %d: %+v %q", i, v, body)
		}
	}
	var wg sync.WaitGroup
	fails := make(chan string, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := g.Client.Get("http://localhost:9080/many")
			if err != nil {
				fails <- err.Error()
				return
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(b) != "h2 ok" || res.Header.Get("X-Outcome") != "ok" {
				fails <- fmt.Sprintf("%d %q %q", res.StatusCode, b, res.Header.Get("X-Outcome"))
			}
		}()
	}
	wg.Wait()
	close(fails)
	for f := range fails {
		t.Errorf("concurrent GET: %s", f)
	}
	res, _ := post(t, g, "/pay", "amount=10")
	if v := verdictOf(res); v.status != 502 || v.outcome != "reset" || v.executed != "maybe" {
		t.Fatalf("POST reset on a reused h2 connection: %+v, want 502 reset maybe", v)
	}
	if n := posts.Load(); n != 1 {
		t.Fatalf("upstream got the POST %d times, want once", n)
	}
	if n := conns.Load(); n > 2 {
		t.Errorf("%d connections for the requests, want them on one (or two) HTTP/2 connections", n)
	}
	// a reused HTTP/2 connection still tells a fresh request apart
	res, body := g.get("/after")
	if v := verdictOf(res); v.status != 200 || body != "h2 ok" {
		t.Fatalf("GET after the reset: %+v %q", v, body)
	}
}

// attempt.go onGotConn/resending with TLS and HTTP/1.1: a request sent
// on a reused HTTP/1 TLS connection that the upstream closes without an
// answer is never sent again by net/http on a new connection: the POST
// arrives once.
func TestAttemptHTTP1OverTLSReusedConnectionNotResent(t *testing.T) {
	var posts atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			posts.Add(1)
			io.ReadAll(r.Body)
			hangUp(w)
			return
		}
		io.WriteString(w, "h1 ok")
	}))
	srv.TLS = &tls.Config{NextProtos: []string{"http/1.1"}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "https://")
	g := loadGateway(t, verdictSite("https://"+addr, "", "tls_insecure_skip_verify\nbreaker off"))
	if res, body := g.get("/warm"); res.StatusCode != 200 || body != "h1 ok" {
		t.Fatalf("warm-up: %d %q", res.StatusCode, body)
	}
	res, _ := post(t, g, "/pay", "amount=10")
	if v := verdictOf(res); v.status != 502 || v.executed != "maybe" {
		t.Fatalf("POST cut on a reused TLS HTTP/1 connection: %+v, want 502 maybe", v)
	}
	if n := posts.Load(); n != 1 {
		t.Fatalf("upstream got the POST %d times, want once", n)
	}
}

// SPEC §15: a kept answer's headers as served are the answer's, not the
// connection's it came on: a header the upstream named in Connection,
// and Keep-Alive, reach neither the client of the fresh answer nor the
// client of the stale one; the answer's own headers do.
func TestFallbackStaleAnswerCarriesNoHopByHopHeaders(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Connection", "X-Hop, keep-alive")
		w.Header().Set("X-Hop", "conn-secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Alt-Svc", `h3=":443"`)
		w.Header().Set("X-Own", "mine")
		io.WriteString(w, "body")
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry {\nattempts 1\n}\nfallback"))
	check := func(what string, res *http.Response) {
		t.Helper()
		for _, h := range []string{"X-Hop", "Keep-Alive", "Alt-Svc"} {
			if v := res.Header.Get(h); v != "" {
				t.Errorf("%s answer carries %s: %q", what, h, v)
			}
		}
		if res.Header.Get("X-Own") != "mine" {
			t.Errorf("%s answer lost X-Own", what)
		}
	}
	res, body := getHost(t, g, "", "/hop")
	if res.StatusCode != 200 || body != "body" {
		t.Fatalf("fresh: %d %q", res.StatusCode, body)
	}
	check("fresh", res)
	up.mode.Store("503")
	res, body = getHost(t, g, "", "/hop")
	if res.StatusCode != 200 || body != "body" || res.Header.Get("X-Fallback") != "stale" {
		t.Fatalf("stale: %d %q fallback %q", res.StatusCode, body, res.Header.Get("X-Fallback"))
	}
	check("stale", res)
}

// SPEC §6/§13: {http.resilient.retry_after} is 1 on a 409 for a key in
// flight (wait 0), as its Retry-After header is; a replay of a kept
// answer carries the Retry-After the upstream gave, in the header and
// the placeholder, and a conflict on a used key sets none.
func TestKeyConflictAndReplayRetryAfter(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		if r.URL.Path == "/slow" {
			<-release
		}
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(201)
		io.WriteString(w, "created")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency {\nwait 0\n}"))
	first := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/slow", strings.NewReader("x"))
		req.Header.Set("Idempotency-Key", "k-slow")
		res, err := g.Client.Do(req)
		if err == nil {
			io.ReadAll(res.Body)
			res.Body.Close()
		}
		first <- res
	}()
	deadline := time.Now().Add(3 * time.Second)
	for up.count.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	res, _ := post(t, g, "/slow", "x", "Idempotency-Key", "k-slow")
	if v := verdictOf(res); v.status != 409 || v.retryAfter != "1" || res.Header.Get("Retry-After") != "1" || v.executed != "no" {
		t.Fatalf("in-flight conflict: %+v Retry-After %q, want 409 retry_after 1 executed no", v, res.Header.Get("Retry-After"))
	}
	once.Do(func() { close(release) })
	if r := <-first; r == nil || r.StatusCode != 201 || r.Header.Get("X-Retry-After") != "7" {
		t.Fatalf("first: %+v", r)
	}
	res, body := post(t, g, "/slow", "x", "Idempotency-Key", "k-slow")
	if v := verdictOf(res); v.status != 201 || body != "created" || v.retryAfter != "7" || res.Header.Get("Retry-After") != "7" {
		t.Fatalf("replay: %+v %q Retry-After %q, want 201 retry_after 7", v, body, res.Header.Get("Retry-After"))
	}
	// a used key with another body: 422, nothing to wait for
	res, _ = post(t, g, "/slow", "y", "Idempotency-Key", "k-slow")
	if v := verdictOf(res); v.status != 422 || v.retryAfter != "" {
		t.Fatalf("mismatch: %+v, want 422 without retry_after", v)
	}
}
