package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// rawUpstream is a loopback TCP server that answers with exact bytes, as
// a broken or hostile upstream would: each connection's request headers
// are read with http.ReadRequest, then the connection is handed to
// answer, and closed when answer returns.
type rawUpstream struct {
	addr     string
	conns    atomic.Int64 // connections accepted
	requests atomic.Int64 // requests read
}

// startRaw starts a rawUpstream; answer gets the connection, the request
// read from it (its Body reads on from the connection) and its number
// from 1.
func startRaw(t *testing.T, answer func(n int64, c net.Conn, req *http.Request)) *rawUpstream {
	t.Helper()
	ln := freshLoopback(t)
	u := &rawUpstream{addr: ln.Addr().String()}
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns.Add(1)
			mu.Lock()
			open[c] = true
			mu.Unlock()
			go func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(open, c)
					mu.Unlock()
				}()
				c.SetDeadline(time.Now().Add(30 * time.Second)) // never outlive a stuck test for long
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				answer(u.requests.Add(1), c, req)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
	})
	return u
}

// rawAnswer is an answer that writes b and closes the connection.
func rawAnswer(b string) func(int64, net.Conn, *http.Request) {
	return func(_ int64, c net.Conn, _ *http.Request) { io.WriteString(c, b) }
}

// untilHangUp blocks until the gateway closes c (or the test ends). Call
// it once the request is read: it reads c itself.
func untilHangUp(c net.Conn) { io.Copy(io.Discard, c) }

// timedGet is g.get, also returning how long it took.
func timedGet(g *gateway, path string) (*http.Response, time.Duration) {
	g.t.Helper()
	start := time.Now()
	res, _ := g.get(path)
	return res, time.Since(start)
}

// Guards attempt.go, attemptTrace.onWroteRequest: the read phase starts
// once the request is written and only the final response headers end
// it (there is no Got1xxResponse hook that would end it). Were a 103
// taken as the end of the read phase, nothing would bound the wait but
// the 5s attempt/total bounds: 504 total_timeout after 5s.
func TestHostileEarlyHintsThenSilenceIsReadTimeout(t *testing.T) {
	up := startRaw(t, func(_ int64, c net.Conn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
		untilHangUp(c)
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			timeouts {
				read 1s
				attempt 5s
				total 5s
			}
			retry off
		}`))
	res, took := timedGet(g, "/hints")
	expect(t, res, http.StatusGatewayTimeout, "read_timeout")
	if took > 3*time.Second {
		t.Errorf("took %v; the read timeout is 1s (the total 5s)", took)
	}
	if e := g.lastEntry(); e.Outcome != "read_timeout" || e.Attempts != 1 || up.requests.Load() != 1 {
		t.Errorf("upstream got %d requests; log: %s", up.requests.Load(), e.raw)
	}
}

// Guards the same lines for 100 Continue, sent as upstreams do, after the
// request headers and before the body is read: the 100 is no answer (it
// does not call attemptTrace.headers, which would lift every bound and
// keep onWroteRequest from starting the read phase), so the read phase
// that starts once the body is written runs until the final headers.
// Were the 100 taken as the answer, the upstream's 200 after 4s would
// pass as ok.
func TestHostileContinueThenSlowAnswerIsReadTimeout(t *testing.T) {
	var sawExpect atomic.Bool
	var bodyRead atomic.Int64
	up := startRaw(t, func(_ int64, c net.Conn, req *http.Request) {
		sawExpect.Store(req.Header.Get("Expect") == "100-continue")
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		n, _ := io.Copy(io.Discard, req.Body)
		bodyRead.Store(n)
		hungUp := make(chan struct{})
		go func() { untilHangUp(c); close(hungUp) }()
		select {
		case <-time.After(4 * time.Second):
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
		case <-hungUp:
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			timeouts {
				read 1s
			}
			retry off
		}`))
	const body = `{"order":100}`
	req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/orders", strings.NewReader(body))
	req.Header.Set("Expect", "100-continue")
	start := time.Now()
	res, _ := g.do(req)
	took := time.Since(start)
	expect(t, res, http.StatusGatewayTimeout, "read_timeout")
	if took > 3*time.Second {
		t.Errorf("took %v; the read timeout is 1s", took)
	}
	if !sawExpect.Load() || bodyRead.Load() != int64(len(body)) {
		t.Errorf("upstream saw Expect: %v and %d body bytes; want the 100-continue exchange with the whole body", sawExpect.Load(), bodyRead.Load())
	}
	if e := g.lastEntry(); e.Outcome != "read_timeout" || e.Attempts != 1 || up.requests.Load() != 1 {
		t.Errorf("upstream got %d requests; log: %s", up.requests.Load(), e.raw)
	}
}

// Guards retry.go, parseRetryAfter: an all-digit Retry-After too large
// for an int64 (ParseInt fails with ErrRange) is maxRetryAfter, a very
// long ask, so the 503 is passed on at once with retry_denied
// retry_after. Were it taken as junk, the GET would be retried on the
// 2s backoff: 3 attempts and seconds of waiting.
func TestHostileRetryAfterTooLargeForAnIntegerIsALongAsk(t *testing.T) {
	asks := map[string]string{
		"/twenty": "99999999999999999999",
		"/10kb":   strings.Repeat("9", 10<<10),
	}
	up := startRaw(t, func(_ int64, c net.Conn, req *http.Request) {
		fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", asks[req.URL.Path])
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 2s 2s
			}
			breaker off
		}`))
	for _, path := range []string{"/twenty", "/10kb"} {
		before := up.requests.Load()
		res, took := timedGet(g, path)
		expect(t, res, http.StatusServiceUnavailable, "upstream_status")
		if res.Header.Get("Retry-After") != asks[path] {
			t.Errorf("%s: the upstream's Retry-After was not passed on unchanged", path)
		}
		if got := up.requests.Load() - before; got != 1 || res.Header.Get("X-Attempts") != "1" {
			t.Errorf("%s: upstream got %d requests, X-Attempts %q; want one, not retried", path, got, res.Header.Get("X-Attempts"))
		}
		if took > time.Second {
			t.Errorf("%s: took %v; the answer must be passed on at once", path, took)
		}
		if e := g.lastEntry(); e.Path != path || e.Denied != "retry_after" || e.Attempts != 1 {
			t.Errorf("%s: want retry_denied retry_after after 1 attempt, log: %s", path, e.raw)
		}
	}
}

// Guards attempt.go, exchange.attempt: a status below 100 is turned into
// errBadStatus, a reset (502), before Caddy sees it. Without that, Caddy
// calls WriteHeader(99), net/http panics, and the client gets an EOF.
// As a reset it is retried like one: a GET makes exactly 3 attempts.
func TestHostileStatusBelow100IsReset(t *testing.T) {
	const weird = "HTTP/1.1 099 Weird\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
	once := startRaw(t, rawAnswer(weird))
	g := loadGateway(t, proxySite(once.addr, `transport resilient {
			retry off
		}`))
	res, _ := g.get("/weird")
	expect(t, res, http.StatusBadGateway, "reset")
	if res.Header.Get("X-Attempts") != "1" || once.requests.Load() != 1 {
		t.Errorf("X-Attempts %q, upstream got %d requests; want 1 with retry off", res.Header.Get("X-Attempts"), once.requests.Load())
	}
	if e := g.lastEntry(); e.Outcome != "reset" || e.Status != 502 || e.Attempts != 1 {
		t.Errorf("log: %s", e.raw)
	}

	retried := startRaw(t, rawAnswer(weird))
	g = loadGateway(t, proxySite(retried.addr, `transport resilient`))
	res, _ = g.get("/weird")
	expect(t, res, http.StatusBadGateway, "reset")
	if res.Header.Get("X-Attempts") != "3" || retried.conns.Load() != 3 || retried.requests.Load() != 3 {
		t.Errorf("X-Attempts %q, upstream got %d connections and %d requests; want 3 of each with default retries",
			res.Header.Get("X-Attempts"), retried.conns.Load(), retried.requests.Load())
	}
	if e := g.lastEntry(); e.Outcome != "reset" || len(e.Tries) != 3 {
		t.Errorf("log: %s", e.raw)
	}
}

// cutBodyCase runs the checks for an upstream that answers 200 and then
// breaks its body off (answer): the client keeps its 200 and sees the
// body end in an error after prefix; the log entry and the metrics say
// reset; and each such answer is a failure for the breaker, so with
// consecutive_failures 2 the third request is refused unsent.
//
// It guards attempt.go, attemptBody.Read (a read error on the upstream's
// side marks the body cut) and Close (a cut body ends as reset), and the
// end callback in exchange.finish (ticket.lateFailure turns the success
// reported at the headers into a failure). Reverted, the entry says ok,
// requests_total counts ok, and the third request reaches the upstream.
func cutBodyCase(t *testing.T, answer, prefix string) {
	t.Helper()
	up := startRaw(t, rawAnswer(answer))
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry off
			breaker {
				consecutive_failures 2
			}
		}`))
	for i := 1; i <= 2; i++ {
		start := time.Now()
		res, err := g.Client.Get("http://localhost:9080/cut")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || err == nil || string(body) != prefix {
			t.Fatalf("request %d: status %d, body %q, read error %v; want 200, %q, then an error", i, res.StatusCode, body, err, prefix)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("request %d took %v", i, took)
		}
		es := g.entries(i)
		if len(es) != i {
			t.Fatalf("request %d: %d log entries", i, len(es))
		}
		if e := es[i-1]; e.Outcome != "reset" || e.Status != 200 || e.Attempts != 1 {
			t.Errorf("request %d: want outcome reset, status 200, 1 attempt; log: %s", i, e.raw)
		}
		if i == 1 {
			s := metricsScrape(t)
			reset := metricsValue(s, "caddy_resilient_requests_total", map[string]string{"upstream": up.addr, "outcome": "reset"})
			ok := metricsValue(s, "caddy_resilient_requests_total", map[string]string{"upstream": up.addr, "outcome": "ok"})
			if reset != 1 || ok > 0 {
				t.Errorf("requests_total: reset %v, ok %v; want the cut answer counted once, as reset", reset, ok)
			}
		}
	}
	start := time.Now()
	res, err := g.Client.Get("http://localhost:9080/cut")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body) // a cut body, should the request get through
	res.Body.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("the third request took %v", took)
	}
	if res.Header.Get("X-Attempts") != "0" || up.conns.Load() != 2 {
		t.Errorf("X-Attempts %q, upstream got %d connections; want the third request refused unsent", res.Header.Get("X-Attempts"), up.conns.Load())
	}
	expect(t, res, http.StatusServiceUnavailable, "breaker_open")
}

func TestHostileBodyShortOfContentLengthIsReset(t *testing.T) {
	half := strings.Repeat("x", 50)
	cutBodyCase(t, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"+half, half)
}

func TestHostileBrokenChunkIsReset(t *testing.T) {
	cutBodyCase(t, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", "hello")
}

// Guards exchange.go, errHeaderTooLarge and at.noRetry in
// exchange.attempt: headers over net/http's 10MB limit end as a reset
// that is not retried, since asking again makes the gateway read as much
// again. Reverted, the GET is retried like any reset: 3 connections.
func TestHostileOversizedHeadersAreResetNotRetried(t *testing.T) {
	pad := "X-Pad: " + strings.Repeat("a", 1000) + "\r\n"
	block := strings.Repeat(pad, 1000) // ~1MB
	up := startRaw(t, func(_ int64, c net.Conn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		for i := 0; i < 12; i++ { // ~12MB, and never the blank line
			if _, err := io.WriteString(c, block); err != nil {
				return // the gateway gave up reading
			}
		}
		untilHangUp(c)
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient`))
	res, took := timedGet(g, "/huge")
	expect(t, res, http.StatusBadGateway, "reset")
	if took > 5*time.Second {
		t.Errorf("took %v", took)
	}
	if res.Header.Get("X-Attempts") != "1" || up.conns.Load() != 1 {
		t.Errorf("X-Attempts %q, upstream got %d connections; want 1: oversized headers are not asked for again", res.Header.Get("X-Attempts"), up.conns.Load())
	}
	if e := g.lastEntry(); e.Outcome != "reset" || e.Attempts != 1 || len(e.Tries) != 1 {
		t.Errorf("log: %s", e.raw)
	}
}

// readmeRedactingLog is the Caddyfile of the README's "Keeping secrets
// out of Caddy's logs", verbatim: TestReadmeLogFilterRedactsCaddysOwnLogs
// checks that README.md repeats it and loads its global options.
const readmeRedactingLog = `{
	log default {
		output stderr
		format filter {
			wrap json
			request>uri query {
				delete api_key
			}
			request>headers>X-Api-Key delete
		}
	}
}

:8080 {
	reverse_proxy https://api.payments.example {
		transport resilient
	}
}
`

// loadWithOptions loads a config whose global options block is options
// (which must set the test's admin and ports), then sites, and waits
// until it serves; for configs that bring their own `log default`.
func loadWithOptions(t *testing.T, options, sites string) *gateway {
	t.Helper()
	id := loads.Add(1)
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		TestRequestTimeout: 10 * time.Second,
		LoadRequestTimeout: 10 * time.Second,
	})
	tester.InitServer(options+sites+fmt.Sprintf(loadCheckSite, id), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	waitForLoad(t, id)
	return &gateway{Tester: tester, t: t}
}

// The transport itself never logs query strings or header values, but
// Caddy's reverse proxy does: its warn "aborting with incomplete
// response" and its debug "upstream roundtrip" carry the whole request.
// This proves the README's filter keeps the secrets out of both lines
// while the lines themselves are still written.
func TestReadmeLogFilterRedactsCaddysOwnLogs(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```caddyfile\n"+readmeRedactingLog+"```\n") {
		t.Fatal("README.md does not show readmeRedactingLog verbatim in a caddyfile block")
	}
	if got := string(caddyfile.Format([]byte(readmeRedactingLog))); got != readmeRedactingLog {
		t.Fatalf("the README's snippet is not caddy fmt clean; formatted:\n%s", got)
	}

	// its global options, moved to the test's admin, ports and a log file
	// at debug level
	end := strings.Index(readmeRedactingLog, "\n}\n")
	options := readmeRedactingLog[:end+3]
	logPath := filepath.Join(workDir, fmt.Sprintf("redacted-%d.log", time.Now().UnixNano()))
	const output = "output stderr"
	if !strings.HasPrefix(options, "{\n") || strings.Count(options, output) != 1 {
		t.Fatalf("the snippet does not start with global options holding %q once", output)
	}
	options = "{\n\tadmin localhost:2999\n\thttp_port 9080\n\thttps_port 9443\n\tgrace_period 1ns\n\tpersist_config off\n" +
		"\tstorage file_system " + workDir + "/data\n" +
		strings.Replace(options[2:], output, "output file "+logPath+"\n\t\tlevel DEBUG", 1)

	half := strings.Repeat("x", 50)
	up := startRaw(t, rawAnswer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"+half))
	g := loadWithOptions(t, options, proxySite(up.addr, `transport resilient`))

	const querySecret, headerSecret = "q-secret-5f1e", "h-secret-9a7c"
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/charge?api_key="+querySecret+"&page=2", nil)
	req.Header.Set("X-Api-Key", headerSecret)
	res, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(res.Body) // cut short: Caddy warns "aborting with incomplete response"
	res.Body.Close()

	var lines []string
	deadline := time.Now().Add(3 * time.Second)
	for {
		data, _ := os.ReadFile(logPath)
		lines = strings.Split(string(data), "\n")
		if strings.Contains(string(data), "aborting with incomplete response") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	found := map[string]bool{}
	for _, line := range lines {
		if strings.Contains(line, querySecret) || strings.Contains(line, headerSecret) {
			t.Errorf("a secret reached Caddy's log: %s", line)
		}
		for _, msg := range []string{`"msg":"aborting with incomplete response"`, `"msg":"upstream roundtrip"`} {
			// the line is there, with the request's uri minus the secret
			if strings.Contains(line, msg) && strings.Contains(line, `"uri":"/charge?page=2"`) && strings.Contains(line, `"headers":{`) {
				found[msg] = true
			}
		}
	}
	if len(found) != 2 {
		t.Errorf("want both Caddy lines that carry the request, redacted; found %v in %s", found, logPath)
	}
}
