package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fallback (SPEC §15) at its edges: where a kept answer could cross
// from one caller, variant or provider to another, where a good kept
// answer could be lost to one that is not kept, and how a served answer
// differs from the one that was kept.

// edgeSite proxies :9080 (any host) to up with reverse_proxy options
// (header_up and the like) and transport options, and reports the
// outcome and the fallback's verdict on every answer.
func edgeSite(up, proxyOptions, transport string) string {
	return fmt.Sprintf(`
http://:9080 {
	reverse_proxy %s {
		%s
		transport resilient {
			%s
		}
		header_down X-Outcome {http.resilient.outcome}
		header_down X-Executed {http.resilient.executed}
		header_down X-Fallback {http.resilient.fallback}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		header X-Executed {http.resilient.executed}
		header X-Fallback {http.resilient.fallback}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`, up, proxyOptions, transport)
}

// getHost GETs path from the gateway with Host host and the headers
// given as name, value pairs.
func getHost(t *testing.T, g *gateway, host, path string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://localhost:9080"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return g.do(req)
}

// SPEC §15: "scope {http.request.host} {http.request.header.Authorization}
// # answers are kept per value of these, as §13" and "answers never
// cross scope values". A scope placeholder's value is what Caddy's
// replacer gives for it: the caller's request. The fallback reads the
// request the transport sends instead (fallback.go scopeValue: req.Host
// and req.Header after header_up), so a gateway that moves the tenant
// out of a header before calling the provider keeps one answer for
// every tenant, and serves alice's to bob.
func TestFallbackScopeIsTheCallersValueNotTheHeaderSentUpstream(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, "statement of "+r.Header.Get("X-Account"))
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, `
		header_up -X-Tenant
		header_up X-Account "acct-{http.request.header.X-Tenant}"`,
		"breaker off\nfallback {\nscope {http.request.header.X-Tenant}\n}"))
	if _, body := getHost(t, g, "", "/e-statement", "X-Tenant", "alice"); body != "statement of acct-alice" {
		t.Fatalf("healthy: %q", body)
	}
	up.mode.Store("503")
	res, body := getHost(t, g, "", "/e-statement", "X-Tenant", "bob")
	if strings.Contains(body, "alice") || res.Header.Get("X-Outcome") == "stale" {
		t.Fatalf("bob (scope value %q) got %d %s %q: the answer kept for scope value %q crossed scopes",
			"bob", res.StatusCode, res.Header.Get("X-Outcome"), body, "alice")
	}
}

// The same with the default scope: {http.request.host} is the host the
// caller asked for, but scopeValue reads req.Host, which `header_up Host`
// (how a gateway reaches an external HTTPS API by name) has set to the
// provider's: every site behind the gateway shares one kept answer.
func TestFallbackDefaultScopeHostIsTheCallersHost(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, "settings of "+r.Header.Get("X-Forwarded-Host"))
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "header_up Host provider.test", "breaker off\nfallback"))
	if _, body := getHost(t, g, "alice.test", "/e-settings"); body != "settings of alice.test" {
		t.Fatalf("healthy: %q", body)
	}
	up.mode.Store("503")
	res, body := getHost(t, g, "bob.test", "/e-settings")
	if strings.Contains(body, "alice") || res.Header.Get("X-Outcome") == "stale" {
		t.Fatalf("bob.test got %d %s %q: the answer kept for {http.request.host} alice.test crossed scopes",
			res.StatusCode, res.Header.Get("X-Outcome"), body)
	}
}

// SPEC §15: kept "per method, target (after rewrites), scope values and
// the values of the request headers its Vary names". varyKey
// (fallback.go) hashes the values of the named headers but not their
// names, and the marker that says which headers to read is replaced by
// each answer: once the upstream's Vary names another header, an
// answer kept for X-Role: admin is served to a request whose X-User is
// admin (and which has no X-Role at all).
func TestFallbackVaryKeysOnTheHeaderNamesToo(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("X-Mode") == "role" {
			w.Header().Set("Vary", "X-Role")
			io.WriteString(w, "for role "+r.Header.Get("X-Role"))
		} else {
			w.Header().Set("Vary", "X-User")
			io.WriteString(w, "for user "+r.Header.Get("X-User"))
		}
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nfallback"))
	if _, body := getHost(t, g, "", "/e-vary-names", "X-Mode", "role", "X-Role", "admin"); body != "for role admin" {
		t.Fatalf("healthy: %q", body)
	}
	getHost(t, g, "", "/e-vary-names", "X-User", "bob")
	up.mode.Store("503")
	res, body := getHost(t, g, "", "/e-vary-names", "X-User", "admin")
	if res.Header.Get("X-Outcome") == "stale" && body != "for user admin" {
		t.Fatalf("X-User: admin got the stale answer %q, kept for another header's value (X-Role: admin)", body)
	}
}

// SPEC §15: "an upstream answer with hostile headers or a body cut short
// is never kept", "larger answers are not kept", and the kept answer
// is served "when ... a kept answer no older than stale exists". An
// answer that is not kept must leave the good answer kept before it in
// place. With a Vary header, fallbackAnswered (fallback.go) writes the
// Vary marker over the key as soon as the headers come, before it knows
// whether the answer will be kept: a cut, oversized or hostile answer
// erases the last good one, and the next failure gets a miss.
func TestFallbackAnAnswerNotKeptLeavesTheKeptOneInPlace(t *testing.T) {
	var n [3]atomic.Int64
	bad := map[string]func(w http.ResponseWriter){
		"/e-cut": func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, strings.Repeat("x", 50))
			w.(http.Flusher).Flush()
			hangUp(w)
		},
		"/e-big": func(w http.ResponseWriter) {
			for range 16 {
				io.WriteString(w, strings.Repeat("y", 1024))
				w.(http.Flusher).Flush()
			}
		},
		"/e-hostile": func(w http.ResponseWriter) {
			for i := range 300 {
				w.Header().Set(fmt.Sprintf("X-H%d", i), "v")
			}
			io.WriteString(w, "many headers")
		},
	}
	paths := []string{"/e-cut", "/e-big", "/e-hostile"}
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		for i, p := range paths {
			if r.URL.Path == p && n[i].Add(1) == 2 {
				w.Header().Set("Vary", "Accept-Language")
				bad[p](w)
				return true
			}
		}
		io.WriteString(w, "good "+r.URL.Path)
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nfallback {\nmax_response 4KiB\n}"))
	for _, p := range paths {
		if _, body := getHost(t, g, "", p); body != "good "+p {
			t.Fatalf("%s healthy: %q", p, body)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080"+p, nil)
		if res, err := g.Client.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}
	up.mode.Store("503")
	for _, p := range paths {
		res, body := getHost(t, g, "", p)
		if res.Header.Get("X-Outcome") != "stale" || body != "good "+p {
			t.Errorf("%s: got %d %s (fallback %s) %q, want the good answer kept before the one that was not kept",
				p, res.StatusCode, res.Header.Get("X-Outcome"), res.Header.Get("X-Fallback"), body)
		}
	}
}

// SPEC §15: "An upstream's stale-if-error=N caps stale for that answer."
// For that answer only: the Vary marker is put again with each answer's
// own expiry (fallback.go fallbackAnswered), so one variant with
// stale-if-error=1 makes every other variant of the target unreachable
// a second later, although each was kept for an hour.
func TestFallbackStaleIfErrorOfOneVariantLeavesTheOthers(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		lang := r.Header.Get("Accept-Language")
		w.Header().Set("Vary", "Accept-Language")
		if lang == "de" {
			w.Header().Set("Cache-Control", "stale-if-error=1")
		}
		io.WriteString(w, "in "+lang)
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nfallback"))
	getHost(t, g, "", "/e-lang", "Accept-Language", "fr")
	getHost(t, g, "", "/e-lang", "Accept-Language", "de")
	time.Sleep(1200 * time.Millisecond)
	up.mode.Store("503")
	res, body := getHost(t, g, "", "/e-lang", "Accept-Language", "fr")
	if res.Header.Get("X-Outcome") != "stale" || body != "in fr" {
		t.Fatalf("fr: got %d %s (fallback %s) %q, want its own answer (kept for 1h) stale",
			res.StatusCode, res.Header.Get("X-Outcome"), res.Header.Get("X-Fallback"), body)
	}
	if res, _ := getHost(t, g, "", "/e-lang", "Accept-Language", "de"); res.Header.Get("X-Outcome") == "stale" {
		t.Fatal("de: served past its stale-if-error=1")
	}
}

// SPEC §4: "When an upstream's breaker is open, a request sent to that
// upstream must end up served by a healthy upstream of the same
// reverse_proxy, whatever its method, since nothing was sent", and the
// README's failover section: "Two mechanisms do this, and they
// combine" (`lb_retries` moves a breaker_open refusal on). With
// fallback, the transport answers a refused GET with the kept answer
// at once (exchange.go finish), so lb_retries never moves it: the
// caller gets a stale answer while a healthy upstream stands by. (§15
// says "With an open breaker it is served at once"; with a healthy
// upstream to move to, the two promises collide, and the operator's
// fresh answer should win.)
func TestFallbackDoesNotStopFailoverToAHealthyUpstream(t *testing.T) {
	answer := func(name string) *upstream {
		return startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "rates from "+name)
		})
	}
	a, b := answer("a"), answer("b")
	g := loadGateway(t, edgeSite(a.addr+" "+b.addr, "lb_policy round_robin\nlb_retries 1",
		"breaker {\nconsecutive_failures 5\n}\nfallback"))
	t.Cleanup(func() { adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+a.addr, nil) })
	for range 2 {
		getHost(t, g, "", "/e-rates")
	}
	if code := adminCall(t, http.MethodPost, "/resilient/breakers/force_open?upstream="+a.addr+"&for=30s", nil); code != http.StatusOK {
		t.Fatalf("force_open: %d", code)
	}
	for i := range 4 {
		res, body := getHost(t, g, "", "/e-rates")
		if res.StatusCode != http.StatusOK || res.Header.Get("X-Outcome") != "ok" || body != "rates from b" {
			t.Fatalf("request %d: %d %s %q, want a fresh answer from the healthy upstream b", i,
				res.StatusCode, res.Header.Get("X-Outcome"), body)
		}
	}
}

// SPEC §15: the client "gets it" (the kept answer: "status, headers
// and body"). A HEAD's Content-Length is the size of what a GET would
// get (RFC 9110 §8.6). encodeKeptHead drops Content-Length as if it
// were hop-by-hop, and answerHere writes the length of the kept body,
// which a HEAD's answer never has: the stale HEAD says the resource is
// empty.
func TestFallbackHeadKeepsItsContentLength(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", "1234")
		if r.Method != http.MethodHead {
			io.WriteString(w, strings.Repeat("z", 1234))
		}
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nfallback"))
	head := func() *http.Response {
		req, _ := http.NewRequest(http.MethodHead, "http://localhost:9080/e-file", nil)
		res, _ := g.do(req)
		return res
	}
	fresh := head()
	if fresh.Header.Get("Content-Length") != "1234" {
		t.Fatalf("fresh HEAD: Content-Length %q", fresh.Header.Get("Content-Length"))
	}
	up.mode.Store("503")
	stale := head()
	if stale.Header.Get("X-Outcome") != "stale" {
		t.Fatalf("HEAD: %d %s, want the kept answer", stale.StatusCode, stale.Header.Get("X-Outcome"))
	}
	if got := stale.Header.Get("Content-Length"); got != "1234" {
		t.Fatalf("stale HEAD: Content-Length %q, want the kept answer's 1234", got)
	}
}

// RFC 9110 §7.6.1: a proxy removes the fields its upstream named in
// Connection. Caddy does so for a fresh answer; encodeKeptHead keeps
// the named field but drops Connection itself, so the replay carries a
// connection-specific field the upstream meant for the gateway alone
// (SPEC §15 keeps the answer's "status, headers and body").
func TestFallbackDoesNotReplayConnectionSpecificFields(t *testing.T) {
	var n atomic.Int64
	up := startRaw(t, func(_ int64, c net.Conn, _ *http.Request) {
		if n.Add(1) == 1 {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: gateway-only\r\nContent-Length: 5\r\n\r\nhello")
			return
		}
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\nfallback"))
	fresh, _ := getHost(t, g, "", "/e-hop")
	if fresh.Header.Get("X-Hop") != "" {
		t.Fatalf("fresh answer carries X-Hop %q: Caddy should strip it", fresh.Header.Get("X-Hop"))
	}
	stale, body := getHost(t, g, "", "/e-hop")
	if stale.Header.Get("X-Outcome") != "stale" || body != "hello" {
		t.Fatalf("want the kept answer: %d %s %q", stale.StatusCode, stale.Header.Get("X-Outcome"), body)
	}
	if v := stale.Header.Get("X-Hop"); v != "" {
		t.Fatalf("the stale answer carries X-Hop %q, a field the upstream named in Connection", v)
	}
}

// SPEC §15: the kept answer is "the latest ... answer of each request"
// kept "per method, target (after rewrites), scope values": a request
// to one provider. The store is process-wide and its key names no
// upstream (fallback.go fallbackKey), so two routes of one site that
// strip their prefix to the same path share a key: when the geocoding
// provider fails, its callers get the exchange-rate provider's answer,
// labelled with the geocoder as upstream.
func TestFallbackNeverServesAnotherProvidersAnswer(t *testing.T) {
	fx := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, "EUR/USD 1.08")
		return true
	})
	geo := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, "48.85N 2.35E")
		return true
	})
	route := func(prefix, up string) string {
		return fmt.Sprintf(`
	handle_path /%s/* {
		reverse_proxy %s {
			transport resilient {
				breaker off
				retry off
				fallback
			}
			header_down X-Outcome {http.resilient.outcome}
		}
	}`, prefix, up)
	}
	g := loadGateway(t, "http://:9080 {"+route("fx", fx.addr)+route("geo", geo.addr)+`
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`)
	if _, body := getHost(t, g, "", "/fx/e-latest"); body != "EUR/USD 1.08" {
		t.Fatalf("fx healthy: %q", body)
	}
	geo.mode.Store("503")
	res, body := getHost(t, g, "", "/geo/e-latest")
	if body == "EUR/USD 1.08" || res.Header.Get("X-Outcome") == "stale" {
		t.Fatalf("the geocoder's caller got %d %s %q: the exchange-rate provider's kept answer",
			res.StatusCode, res.Header.Get("X-Outcome"), body)
	}
}

// SPEC §15: "with a caller deadline, the attempt that would miss the
// deadline is not waited for: the kept answer is served when the
// deadline runs out". When the failure is an answer in `on` (a 503)
// whose body then stalls, finish (exchange.go) drains it with discard
// before it serves the kept answer: up to a second (or `read`), past
// the caller's deadline of 300ms.
func TestFallbackServesByTheDeadlineWhenAFailedAnswersBodyStalls(t *testing.T) {
	var n atomic.Int64
	up := startRaw(t, func(_ int64, c net.Conn, _ *http.Request) {
		if n.Add(1) == 1 {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
			return
		}
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\nbusy")
		untilHangUp(c)
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\ndeadline\nfallback"))
	getHost(t, g, "", "/e-quote")
	start := time.Now()
	res, body := getHost(t, g, "", "/e-quote", "X-Request-Timeout", "0.3")
	took := time.Since(start)
	if res.Header.Get("X-Outcome") != "stale" || body != "good" {
		t.Fatalf("got %d %s %q, want the kept answer", res.StatusCode, res.Header.Get("X-Outcome"), body)
	}
	if took > 700*time.Millisecond {
		t.Fatalf("the kept answer came after %v; the caller's deadline was 300ms", took)
	}
}

// SPEC §15: "max_memory 64MiB # all kept answers of this transport,
// oldest dropped first". The store is process-wide and its bound is the
// largest max_memory any transport holds (fallback.go provision,
// answers.Store.Limit): a transport written with max_memory 64KiB
// keeps hundreds of KiB as soon as another route has a fallback with
// the default 64MiB, and drops nothing.
func TestFallbackMaxMemoryBoundsTheAnswersOfItsTransport(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, r.URL.Path+strings.Repeat(".", 2048))
		return true
	})
	route := func(prefix, fallback string) string {
		return fmt.Sprintf(`
	handle /%s/* {
		reverse_proxy %s {
			transport resilient {
				breaker off
				retry off
				fallback {
					%s
				}
			}
			header_down X-Outcome {http.resilient.outcome}
		}
	}`, prefix, up.addr, fallback)
	}
	g := loadGateway(t, "http://:9080 {"+route("small", "max_memory 64KiB\nmax_response 4KiB")+route("other", "")+`
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`)
	const n = 100 // some 250KiB of answers
	for i := range n {
		getHost(t, g, "", fmt.Sprintf("/small/e-k%d", i))
	}
	up.mode.Store("503")
	kept := 0
	for i := range n {
		p := fmt.Sprintf("/small/e-k%d", i)
		res, body := getHost(t, g, "", p)
		if res.Header.Get("X-Outcome") != "stale" {
			continue
		}
		if body != p+strings.Repeat(".", 2048) {
			t.Fatalf("%s: a kept answer of other bytes: %.40q", p, body)
		}
		kept++
	}
	if kept*2048 > 64<<10 {
		t.Fatalf("%d answers of 2KiB kept for a transport with max_memory 64KiB", kept)
	}
}

// The README's failover section: "`lb_retries N`: the transport's
// errors for requests that were refused before anything was sent
// (`breaker_open`, `rate_limited`, and `pool_timeout`, `connect_error`
// or `tls_error` of a request whose body was not touched) look like
// dial errors to Caddy, so `lb_retries` moves them to the next upstream
// for any method." With fallback, a GET whose upstream refuses the
// connection gets the kept answer instead (exchange.go finish), and
// never reaches the healthy upstream.
func TestFallbackDoesNotStopLbRetriesAfterAConnectError(t *testing.T) {
	dead := closedPort(t)
	b := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "rates from b") })
	g := loadGateway(t, edgeSite(dead+" "+b.addr, "lb_policy round_robin\nlb_retries 1",
		"breaker off\nretry off\nfallback"))
	for i := range 4 {
		res, body := getHost(t, g, "", "/e-rates-b")
		if res.StatusCode != http.StatusOK || res.Header.Get("X-Outcome") != "ok" || body != "rates from b" {
			t.Fatalf("request %d: %d %s %q, want a fresh answer from the healthy upstream b", i,
				res.StatusCode, res.Header.Get("X-Outcome"), body)
		}
	}
}

// SPEC §15: "Bounded and private: ... memory bounded by max_memory".
// While answers stream, each is copied into a capture buffer of its own
// (fallback.go fallbackCapture) up to max_response, outside the store
// and its bound: 32 reads of 900KiB in flight hold some 32MiB in a
// gateway written with max_memory 4MiB. (Caddy runs in this process,
// so its heap is measured here.)
func TestFallbackMemoryWhileAnswersStreamIsBounded(t *testing.T) {
	const clients, part = 32, 900 << 10
	release := make(chan struct{})
	var released sync.Once
	defer released.Do(func() { close(release) })
	chunk := strings.Repeat("m", 64<<10)
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", fmt.Sprint(part+1))
		for sent := 0; sent < part; sent += len(chunk) {
			io.WriteString(w, chunk[:min(len(chunk), part-sent)])
		}
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "!")
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\nfallback {\nmax_memory 4MiB\nmax_response 1MiB\n}"))
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	var read, done sync.WaitGroup
	for i := range clients {
		read.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://localhost:9080/e-dl/%d", i), nil)
			res, err := g.Client.Do(req)
			if err != nil {
				read.Done()
				return
			}
			defer res.Body.Close()
			// what the gateway has passed on: all but what its buffers
			// hold back until the answer ends
			io.CopyN(io.Discard, res.Body, part-64<<10)
			read.Done()
			io.Copy(io.Discard, res.Body)
		}()
	}
	read.Wait()
	grew := int64(heap()) - int64(before)
	released.Do(func() { close(release) })
	done.Wait()
	if grew > 12<<20 {
		t.Fatalf("the heap grew by %.1f MiB while %d answers streamed, with fallback max_memory 4MiB",
			float64(grew)/(1<<20), clients)
	}
}

// SPEC §15: "What is kept: ... with status, headers and body up to
// max_response", "max_response 1MiB # larger answers are not kept",
// "memory bounded by max_memory". fallbackAnswered measures the body
// alone against max_response, so an answer with 70KiB of headers is
// kept under max_response 8KiB; and since it costs more than
// max_memory 64KiB on its own, answers.Store.Put drops every other
// kept answer to keep it alone, past the bound.
func TestFallbackMaxResponseCountsTheHeaders(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/e-fat" {
			for i := range 20 {
				w.Header().Set(fmt.Sprintf("X-Fat-%d", i), strings.Repeat("f", 3500))
			}
		}
		io.WriteString(w, "kept "+r.URL.Path+strings.Repeat(".", 1024))
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\nfallback {\nmax_memory 64KiB\nmax_response 8KiB\n}"))
	for i := range 10 {
		getHost(t, g, "", fmt.Sprintf("/e-thin-%d", i))
	}
	getHost(t, g, "", "/e-fat")
	up.mode.Store("503")
	if res, _ := getHost(t, g, "", "/e-fat"); res.Header.Get("X-Outcome") == "stale" {
		t.Errorf("an answer of 70KiB of headers was kept under max_response 8KiB")
	}
	for i := range 10 {
		p := fmt.Sprintf("/e-thin-%d", i)
		if res, _ := getHost(t, g, "", p); res.Header.Get("X-Outcome") != "stale" {
			t.Fatalf("%s: %d %s (fallback %s): a small answer kept before was dropped for one larger than max_response",
				p, res.StatusCode, res.Header.Get("X-Outcome"), res.Header.Get("X-Fallback"))
		}
	}
}

// SPEC §15: the kept answer is served when the request would end in a
// failure of `on`; it waits only for Caddy's lb_retries to move the
// request to another upstream. Caddy moves a failure that is no dial
// error only for a GET by default, or for what `lb_retry_match`
// matches when it is written: a GET it does not match stays where it
// failed, and must get the kept answer, not the 502.
func TestFallbackServesWhatLbRetryMatchDoesNotMove(t *testing.T) {
	a, b := startFlip(t, nil), startFlip(t, nil)
	g := loadGateway(t, edgeSite(a.addr+" "+b.addr, "lb_policy round_robin\nlb_retries 1\nlb_retry_match {\nmethod POST\n}",
		"retry off\nbreaker off\nfallback"))
	for range 2 {
		if res, _ := getHost(t, g, "", "/e-match"); res.StatusCode != http.StatusOK {
			t.Fatalf("fresh: %d", res.StatusCode)
		}
	}
	a.mode.Store("reset")
	b.mode.Store("reset")
	res, body := getHost(t, g, "", "/e-match")
	if res.StatusCode != http.StatusOK || res.Header.Get("X-Outcome") != "stale" {
		t.Fatalf("a GET that lb_retry_match does not move, its upstream reset: %d %s %q, want the kept answer (stale)",
			res.StatusCode, res.Header.Get("X-Outcome"), body)
	}
}

// The same for a HEAD whose upstream said no length (a GET of it is
// chunked): the stale HEAD must not say the resource is empty.
func TestFallbackHeadWithoutALengthSaysNone(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // no Content-Length: a GET's body is chunked
		if r.Method != http.MethodHead {
			io.WriteString(w, strings.Repeat("z", 1234))
		}
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nfallback"))
	head := func() *http.Response {
		req, _ := http.NewRequest(http.MethodHead, "http://localhost:9080/e-chunked", nil)
		res, _ := g.do(req)
		return res
	}
	if fresh := head(); fresh.StatusCode != http.StatusOK {
		t.Fatalf("fresh HEAD: %d", fresh.StatusCode)
	}
	up.mode.Store("503")
	stale := head()
	if stale.Header.Get("X-Outcome") != "stale" {
		t.Fatalf("HEAD: %d %s, want the kept answer", stale.StatusCode, stale.Header.Get("X-Outcome"))
	}
	if got := stale.Header.Get("Content-Length"); got == "0" {
		t.Fatalf("stale HEAD of a resource of unknown length: Content-Length %q, as if it were empty", got)
	}
}
