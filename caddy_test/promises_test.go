package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Promises of SPEC §5, §6, §13 and §16 (and the README's "One execution
// per key", "Calling the gateway" and "Placeholders") checked against a
// real Caddy, where the gateway is most likely to break them: overflowing
// values, bodies read ahead, several upstreams, answers racing deadlines.

// SPEC §5: "An all-digit `Retry-After` too large for an integer is a very
// long ask, not junk." SPEC §6: {http.resilient.retry_after} is "whole
// seconds until a retry could succeed; set for ... an upstream answer
// carrying `Retry-After`". An upstream that asks for a pause longer than
// any duration (or for a date centuries away) must not be reported to the
// caller as "repeat in 1 second": a client following the verdict would
// hammer an upstream that asked it to stay away.
func TestPromiseRetryAfterBeyondADurationIsNotOneSecond(t *testing.T) {
	asks := map[string]string{
		"/twenty": "99999999999999999999",          // too large for an int64
		"/max":    "9223372036",                    // the most whole seconds a Duration holds
		"/date":   "Fri, 31 Dec 9999 23:59:59 GMT", // beyond what a Duration holds
	}
	up := startRaw(t, func(_ int64, c net.Conn, req *http.Request) {
		fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", asks[req.URL.Path])
	})
	g := loadGateway(t, callingSite(up.addr, "breaker off"))
	for _, path := range []string{"/twenty", "/max", "/date"} {
		res, _ := g.get(path)
		v := verdictOf(res)
		if v.status != 503 || v.executed != "no" {
			t.Fatalf("%s: %+v, want the upstream's 503, executed no", path, v)
		}
		secs, err := strconv.ParseInt(v.retryAfter, 10, 64)
		if err != nil || secs < 24*3600 {
			t.Errorf("%s: the upstream asked for Retry-After %q, the caller is told retry_after %q (want at least a day)",
				path, asks[path], v.retryAfter)
		}
	}
}

// SPEC §13: "A waiting repeat whose client leaves stops waiting at once
// (`canceled`)." It must hold whatever the size of the repeat's body: a
// body larger than retry.max_body is not read to its end before the wait,
// so Go's server never notices that the client left, and the repeat waits
// on for the first (here: until the first is let go), holding its
// connection, instead of ending canceled at once.
func TestPromiseWaitingRepeatWithALargeBodyEndsWhenItsClientLeaves(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		<-release
		io.WriteString(w, "done")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	// more than max_body (1MiB by default); what is past it fits in the
	// socket buffers, so the client sends it all before it leaves
	body := strings.Repeat("x", 1<<20+64<<10)
	first := sendAsync(g, "/", body, "Idempotency-Key", "large-leaver")
	poll(t, 2*time.Second, "the first at the upstream", func() bool { return up.of("large-leaver") == 1 })

	mark := len(g.entries(0))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost:9080/", strings.NewReader(body))
	req.Header.Set("Idempotency-Key", "large-leaver")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if res, err := g.Client.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	time.Sleep(300 * time.Millisecond) // the repeat is waiting for the first
	cancel()
	<-done

	// the first is still in flight: the repeat must have ended on its own
	deadline := time.Now().Add(2 * time.Second)
	for len(g.entries(0)) == mark && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	es := g.entries(0)
	free()
	<-first
	if len(es) == mark {
		t.Fatal("2s after its client left, the waiting repeat (body larger than max_body) still waits for the first; want it ended canceled at once")
	}
	if e := es[mark]; e.Outcome != "canceled" {
		t.Fatalf("the repeat whose client left: %s, want canceled", e.raw)
	}
}

// verdictSite is callingSite with the reverse_proxy options given
// (lb_policy, lb_retries...) and the transport block as written, no
// retry block of its own.
func verdictSite(upstreams, options, transport string) string {
	return fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		%s
		transport resilient {
			%s
		}
		header_down X-Outcome {http.resilient.outcome}
		header_down X-Executed {http.resilient.executed}
		header_down X-Attempts {http.resilient.attempts}
		header_down X-Idem {http.resilient.idempotency}
		header_down X-Retry-After {http.resilient.retry_after}
		header_down X-Upstream {http.resilient.upstream}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		header X-Executed {http.resilient.executed}
		header X-Attempts {http.resilient.attempts}
		header X-Idem {http.resilient.idempotency}
		header X-Retry-After {http.resilient.retry_after}
		header X-Upstream {http.resilient.upstream}
		header Content-Type application/problem+json
		respond {http.resilient.problem} {http.error.status_code}
	}
}
`, upstreams, options, transport)
}

// README, "Failover to another upstream": "A request whose body was
// already read is not offered to `lb_retries`: Caddy would send it on
// without its body." SPEC §13: "When the first is released while repeats
// wait, one of them is sent in its place". A repeat that waited for the
// first with its key has its body read ahead (to notice a client that
// leaves); when it then becomes the first and its upstream is refused
// (nothing sent), the transport offers it to lb_retries as untouched, and
// Caddy sends the request, whose body the transport already consumed, to
// the next upstream: the provider executes a POST with an empty body
// (chunked), or gets its headers with no body and the key is spent on a
// 502 "maybe" that every later repeat gets (Content-Length). The
// configuration is the README's own failover setup.
func TestPromiseARepeatSentInTheFirstsPlaceKeepsItsBodyAcrossUpstreams(t *testing.T) {
	const order = `{"parcel":"42","to":"Berlin"}`
	for _, tc := range []struct {
		name string
		body func() io.Reader
	}{
		// a body of unknown length (chunked), as streaming clients send it:
		// the provider gets a whole POST with an empty body
		{"chunked", func() io.Reader { return io.MultiReader(strings.NewReader(order)) }},
		// with Content-Length: the provider gets the headers and no body,
		// and the key is spent on a 502 "maybe"
		{"content-length", func() io.Reader { return strings.NewReader(order) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			var once sync.Once
			free := func() { once.Do(func() { close(release) }) }
			t.Cleanup(free)
			var mu sync.Mutex
			var bodies []string
			up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
				mu.Lock()
				bodies = append(bodies, body)
				n := len(bodies)
				mu.Unlock()
				if n <= 3 { // the first's three attempts
					if n == 1 {
						<-release
					}
					w.WriteHeader(http.StatusServiceUnavailable) // did nothing: the key comes free
					return
				}
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, "created from "+body)
			})
			down := closedPort(t)
			// round_robin picks the second upstream first, then the first,
			// then the second again: the first request goes to up, the
			// repeat to the refused one, and lb_retries moves it to up
			g := loadGateway(t, verdictSite(down+" "+up.addr, "lb_policy resilient round_robin\nlb_retries 1",
				"retry {\n backoff 1ms 2ms\n}\nidempotency"))

			first := sendAsync(g, "/orders", order, "Idempotency-Key", "moved-"+tc.name)
			poll(t, 2*time.Second, "the first at the upstream", func() bool { return up.of("moved-"+tc.name) == 1 })
			type answer struct {
				res  *http.Response
				body string
			}
			repeat := make(chan answer, 1)
			go func() {
				req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/orders", tc.body())
				req.Header.Set("Idempotency-Key", "moved-"+tc.name)
				res, err := g.Client.Do(req)
				if err != nil {
					repeat <- answer{body: err.Error()}
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				repeat <- answer{res, string(b)}
			}()
			time.Sleep(300 * time.Millisecond) // the repeat waits for the first
			free()
			<-first // three 503s: released
			a := <-repeat
			mu.Lock()
			defer mu.Unlock()
			for i, b := range bodies[3:] {
				if b != order {
					t.Errorf("the repeat sent in the first's place reached the upstream (request %d) with body %q, want %q", i+4, b, order)
				}
			}
			// the operation goes through once, with its body; or, when the
			// body it waited with cannot go on to another upstream, the
			// caller is told truthfully that nothing was done, and may
			// repeat it
			switch v := verdictOf(a.res); {
			case a.res == nil:
				t.Errorf("the repeat sent in the first's place got no answer: %s", a.body)
			case v.status == http.StatusCreated && a.body == "created from "+order:
			case v.executed == "no" && v.idem == "released" && len(bodies) == 3:
			default:
				t.Errorf("the repeat sent in the first's place got %+v %s, want the upstream's 201 for the whole order, or nothing sent and executed no", v, a.body)
			}
		})
	}
}

// SPEC §6: {http.resilient.executed} is "what the caller may assume about
// the upstream": "`maybe`: request bytes went out and no answer came";
// "`no`: nothing was done upstream: nothing was sent". The placeholders
// read "the latest exchange (lb_retries included)", and Caddy's
// lb_retries moves a GET after any error (the README's failover setup):
// the first upstream read the request and hung up, the second refused the
// connection. The request's bytes went out and no answer came, yet the
// caller is told `no` ("Repeating is safe"), because only the last
// upstream's exchange is looked at.
func TestPromiseExecutedRemembersAnUpstreamLbRetriesLeft(t *testing.T) {
	read := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		hangUp(w) // read it all, then no answer: it may have acted
	})
	down := closedPort(t)
	// round_robin picks the second upstream first, then the first
	g := loadGateway(t, verdictSite(down+" "+read.addr, "lb_policy resilient round_robin\nlb_retries 1",
		"retry {\n backoff 1ms 2ms\n}\nbreaker off"))
	res, body := g.get("/report")
	if read.count.Load() == 0 {
		t.Fatalf("the upstream that reads never got the request (answer %+v): the order of picks is not as expected", verdictOf(res))
	}
	if v := verdictOf(res); v.executed != "maybe" {
		t.Fatalf("the GET reached %s (%d times), which read it and hung up, then lb_retries moved it to a refused upstream: the caller is told %+v %s; want executed maybe",
			read.addr, read.count.Load(), v, body)
	}
}

// SPEC §13: "the timeouts that end it for its client (`read`, `attempt`,
// `total`, a caller deadline) answer the client (504, `executed maybe`)
// but do not abandon the upstream", and the repeat gets the real answer;
// COMMON: `go test -race` clean. Upstream answers that arrive right at
// the read bound race the carry's detach: whichever wins, the client gets
// either the upstream's answer (executed yes) or a 504 (executed maybe),
// the record ends with the upstream's answer, nothing executes twice, and
// the carrier's goroutine does not write into the attempt the client's
// answer is made from (a data race under -race). Under -race it fails on
// every run; without it, now and then, as a 504 read_timeout that says
// executed yes.
func TestPromiseCarryDetachRacingTheAnswer(t *testing.T) {
	var mu sync.Mutex
	delays := map[string]time.Duration{}
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		mu.Lock()
		d := delays[r.Header.Get("Idempotency-Key")]
		mu.Unlock()
		time.Sleep(d)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "made "+body)
	})
	g := loadGateway(t, verdictSite(up.addr, "", "timeouts {\n read 20ms\n}\nbreaker off\nidempotency"))
	const n = 80
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("race-%d", i)
		mu.Lock()
		delays[key] = 15*time.Millisecond + time.Duration(i)*10*time.Millisecond/n // 15ms to 25ms
		mu.Unlock()
		res, body := post(t, g, "/", key, "Idempotency-Key", key)
		v := verdictOf(res)
		switch {
		case v.status == 201 && v.executed == "yes" && body == "made "+key:
		case v.status == 504 && v.executed == "maybe" && v.outcome == "read_timeout":
		default:
			t.Fatalf("%s: %+v %q, want the upstream's 201 (yes) or a 504 read_timeout (maybe)", key, v, body)
		}
	}
	for _, e := range g.entries(n) {
		if e.Outcome == "read_timeout" && e.Status != 504 {
			t.Errorf("a request answered 504 read_timeout is logged with status %d: %s", e.Status, e.raw)
		}
	}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("race-%d", i)
		res, body := post(t, g, "/", key, "Idempotency-Key", key)
		if v := verdictOf(res); v.status != 201 || body != "made "+key {
			t.Errorf("%s: the repeat got %+v %q, want the upstream's 201", key, v, body)
		}
		if got := up.of(key); got != 1 {
			t.Errorf("%s: executed %d times", key, got)
		}
	}
}

// README, "One execution per key": "A repeat afterwards gets the stored
// answer, status, headers and body"; "Every replay is byte for byte the
// first answer." SPEC §13: "Replays are byte-identical to the first
// answer". An answer's trailer fields (a checksum or a signature sent
// after a streamed body, as gRPC and many signing APIs do) are part of
// what the upstream gave: the first client gets them, the repeat does not.
func TestPromiseReplayKeepsTheAnswersTrailers(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		w.Header().Set("Trailer", "X-Checksum")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "label for "+body)
		w.Header().Set("X-Checksum", "sha256=abc123")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	get := func() (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/labels", strings.NewReader("parcel-7"))
		req.Header.Set("Idempotency-Key", "trailer")
		res, err := g.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body) // trailers are there once the body is read
		return res, string(b)
	}
	first, fb := get()
	if first.StatusCode != 201 || first.Trailer.Get("X-Checksum") != "sha256=abc123" {
		t.Fatalf("the first: %d %q trailer %v, want 201 with the upstream's trailer", first.StatusCode, fb, first.Trailer)
	}
	repeat, rb := get()
	// a replay must be the whole answer, trailer included; an answer the
	// record cannot hold whole is not replayed at all: the key is used
	// (409 without Retry-After, executed yes), as for a large answer
	switch v := verdictOf(repeat); {
	case v.outcome == "replayed":
		if rb != fb {
			t.Fatalf("the repeat: %+v %q, want the replay of %q", v, rb, fb)
		}
		if got := repeat.Trailer.Get("X-Checksum") + repeat.Header.Get("X-Checksum"); got != "sha256=abc123" {
			t.Fatalf("the replay lost the answer's trailer X-Checksum (trailer %v, header %v)", repeat.Trailer, repeat.Header)
		}
	case v.status == http.StatusConflict && v.executed == "yes" && repeat.Header.Get("Retry-After") == "":
	default:
		t.Fatalf("the repeat: %+v %q, want the whole replay or 409 used", v, rb)
	}
	if got := up.of("trailer"); got != 1 {
		t.Fatalf("executed %d times", got)
	}
}

// SPEC §6: {http.resilient.retry_after} is "set for ... an upstream answer
// carrying `Retry-After`"; §13: a repeat afterwards gets "the stored
// answer, status, headers and body as the upstream gave them". The first
// client of an answer with Retry-After is told retry_after; the repeat,
// which gets the same answer with the same Retry-After header, is told
// nothing (the placeholder is empty), so a client that reads the verdict
// (the README's table, the Python library) classifies the same answer
// two ways.
func TestPromiseReplayOfAnAnswerWithRetryAfterSaysRetryAfter(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusInternalServerError) // kept: the upstream acted
		io.WriteString(w, "ledger busy, try later")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	res, _ := post(t, g, "/payments", "pay-1", "Idempotency-Key", "ra-replay")
	if v := verdictOf(res); v.status != 500 || v.retryAfter != "120" {
		t.Fatalf("the first: %+v, want the upstream's 500 with retry_after 120", v)
	}
	res, _ = post(t, g, "/payments", "pay-1", "Idempotency-Key", "ra-replay")
	v := verdictOf(res)
	if v.status != 500 || v.outcome != "replayed" || res.Header.Get("Retry-After") != "120" {
		t.Fatalf("the repeat: %+v Retry-After %q, want the replayed 500 with its Retry-After", v, res.Header.Get("Retry-After"))
	}
	if v.retryAfter != "120" {
		t.Fatalf("the replay carries the upstream's Retry-After: 120, but retry_after is %q", v.retryAfter)
	}
}

// SPEC §13: "A repeat whose body differs only beyond what the gateway
// could hash (an upstream that answered without reading a large body) is
// not called a mismatch: it gets the kept answer or 409, never a false
// 422." An upstream answers a large upload at once, without reading it,
// and the first client's upload stops after its first MiB (it gives up,
// its connection drops). The gateway could hash only that MiB; the
// client's repeat, with the very body it meant to send and the same key,
// is told 422 "reused with another request".
func TestPromiseRepeatOfAnUploadCutShortIsNoMismatch(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "accepted unread")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	body := strings.Repeat("0123456789abcdef", (2<<20)/16) // 2 MiB

	// the first: the whole body announced, its first MiB sent, then gone
	c, err := net.Dial("tcp", "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: localhost:9080\r\nIdempotency-Key: cut-upload\r\nContent-Length: %d\r\n\r\n", len(body))
	c.Write([]byte(body[:1<<20]))
	time.Sleep(500 * time.Millisecond)
	c.Close()
	poll(t, 3*time.Second, "the first's answer at the upstream", func() bool { return up.count.Load() == 1 })
	time.Sleep(200 * time.Millisecond) // its record is kept once its answer was read

	res, got := post(t, g, "/upload", body, "Idempotency-Key", "cut-upload")
	if v := verdictOf(res); v.status == http.StatusUnprocessableEntity {
		t.Fatalf("the repeat with the body the first meant to send: %+v %s; want the kept 202 or 409, never a false 422", v, got)
	}
	if up.count.Load() != 1 {
		t.Fatalf("the upstream got the keyed POST %d times", up.count.Load())
	}
}

// SPEC §6: "`maybe`: request bytes went out and no answer came (reset,
// timeouts, a cut answer), or a replay of such a record." The upstream
// answers a keyed POST 201 and cuts the body short: the first request
// ends `reset` (a cut answer, executed maybe). Its record keeps status and
// headers (the answer could not be kept whole), and the repeat is told
// 409 with executed `yes`, "outcome known to have happened", which is not
// what the first request's own verdict said.
func TestPromiseRepeatOfACutAnswerSaysMaybe(t *testing.T) {
	up := startRaw(t, func(_ int64, c net.Conn, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\nlabel-")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/labels", strings.NewReader("parcel"))
	req.Header.Set("Idempotency-Key", "cut-answer")
	res, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(res.Body)
	res.Body.Close()
	var first logEntry
	poll(t, 2*time.Second, "the first's log entry", func() bool {
		es := g.entries(0)
		if len(es) == 0 {
			return false
		}
		first = es[len(es)-1]
		return true
	})
	if first.Outcome != "reset" {
		t.Fatalf("the first, whose answer was cut: %s, want reset", first.raw)
	}
	res, body := post(t, g, "/labels", "parcel", "Idempotency-Key", "cut-answer")
	if v := verdictOf(res); v.executed != "maybe" {
		t.Fatalf("the repeat of a key whose answer was cut short: %+v %s; want executed maybe (a replay of such a record)", v, body)
	}
	if up.requests.Load() != 1 {
		t.Fatalf("the upstream got %d requests", up.requests.Load())
	}
}

// SPEC §13: "a keyed unsafe request is sent upstream at most once per
// key; every repeat gets the first one's answer"; the change claims one
// execution per key everywhere. A keyed POST that carries an Upgrade
// header (an HTTP/1.1 client offering h2c, say) takes the transport's
// upgrade path, which skips the idempotency step: an upstream that does
// not upgrade answers it as the plain POST it is, and every repeat with
// the same key is executed again.
func TestPromiseKeyedPostOfferingAnUpgradeExecutesOnce(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		w.WriteHeader(http.StatusCreated) // no upgrade: the POST's own answer
		io.WriteString(w, "charged "+body)
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	for i := 0; i < 2; i++ {
		res, body := post(t, g, "/charges", "10 EUR", "Idempotency-Key", "upgrade-offered",
			"Connection", "Upgrade", "Upgrade", "foo/1")
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("POST %d: %+v %q", i+1, verdictOf(res), body)
		}
	}
	if got := up.of("upgrade-offered"); got != 1 {
		t.Fatalf("the keyed POST was executed %d times, want once", got)
	}
}

// SPEC §13: only "a `reset`, `write_timeout` or `canceled` before any
// byte of the request was written" releases the key; "when bytes were
// written but no answer came ... the upstream may have acted". A keyed
// POST whose client gives up in the middle of its upload has had its
// headers and part of its body sent: the upstream got a request, cut.
// Its repeat must not be sent as a new request.
func TestPromiseUploadCutByItsClientKeepsTheKey(t *testing.T) {
	var cut atomic.Int64
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			cut.Add(1)
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "label")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	body := strings.Repeat("parcel. ", 64<<10) // 512 KiB

	// the first: the whole body announced, part of it sent, then gone
	c, err := net.Dial("tcp", "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /labels HTTP/1.1\r\nHost: localhost:9080\r\nIdempotency-Key: cut-by-client\r\nContent-Length: %d\r\n\r\n", len(body))
	c.Write([]byte(body[:100<<10]))
	poll(t, 3*time.Second, "the first at the upstream", func() bool { return up.count.Load() == 1 })
	c.Close()
	var first logEntry
	poll(t, 3*time.Second, "the first's log entry", func() bool {
		es := g.entries(0)
		if len(es) == 0 {
			return false
		}
		first = es[len(es)-1]
		return true
	})
	t.Logf("the first: %s (the upstream saw %d cut)", first.raw, cut.Load())

	res, got := post(t, g, "/labels", body, "Idempotency-Key", "cut-by-client")
	v := verdictOf(res)
	t.Logf("the repeat: %+v %s", v, got)
	if n := up.count.Load(); n != 1 {
		t.Fatalf("the upstream got the keyed POST %d times: a request of which bytes went out released its key", n)
	}
	if v.executed != "maybe" {
		t.Errorf("the repeat of a request the upstream got in part: %+v, want executed maybe", v)
	}
}
