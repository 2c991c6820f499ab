package integration

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an upstream handler that remembers what each request
// carried and answers from a script: the i-th request gets script(i).
type recorder struct {
	mu     sync.Mutex
	keys   []string
	bodies [][32]byte
	at     []time.Time
}

func (rec *recorder) note(r *http.Request, body []byte) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.keys = append(rec.keys, r.Header.Get("Idempotency-Key"))
	rec.bodies = append(rec.bodies, sha256.Sum256(body))
	rec.at = append(rec.at, time.Now())
	return len(rec.keys)
}

func (rec *recorder) snapshot() ([]string, [][32]byte, []time.Time) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.keys...), append([][32]byte(nil), rec.bodies...), append([]time.Time(nil), rec.at...)
}

// scripted starts an upstream whose n-th request (from 1) is answered
// by answer(n, w); it reads the whole request body first.
func scripted(t *testing.T, rec *recorder, answer func(n int, w http.ResponseWriter)) *upstream {
	return startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		answer(rec.note(r, body), w)
	})
}

// hangUp drops the connection without an answer.
func hangUp(w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		conn.Close()
	}
}

func post(t *testing.T, g *gateway, path, body string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://localhost:9080"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return g.do(req)
}

const fastRetry = `transport resilient {
			retry {
				backoff 5ms 20ms
			}
			breaker off
		}`

func TestGetRecoversFromTransient503(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "fine")
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	res, body := g.get("/flaky")
	expect(t, res, http.StatusOK, "ok")
	if body != "fine" || res.Header.Get("X-Attempts") != "3" || up.count.Load() != 3 {
		t.Fatalf("body %q attempts %s upstream saw %d, want fine/3/3", body, res.Header.Get("X-Attempts"), up.count.Load())
	}
	e := g.lastEntry()
	if len(e.Tries) != 3 || e.Tries[0].Status != 503 || e.Tries[2].Outcome != "ok" || e.Tries[1].Wait <= 0 {
		t.Errorf("tries not logged as they happened: %s", e.raw)
	}
}

func TestGetRecoversFromReset(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n == 1 {
			hangUp(w)
			return
		}
		io.WriteString(w, "fine")
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	res, _ := g.get("/reset")
	expect(t, res, http.StatusOK, "ok")
	if e := g.lastEntry(); len(e.Tries) != 2 || e.Tries[0].Outcome != "reset" {
		t.Errorf("want a reset then ok, log: %s", e.raw)
	}
}

func TestGetRecoversFromRefusedConnection(t *testing.T) {
	addr := closedPort(t)
	g := loadGateway(t, proxySite(addr, `transport resilient {
			retry {
				attempts 10
				backoff 100ms 100ms
			}
			breaker off
		}`))
	// the request starts against a closed port; the upstream comes up
	// 200 ms later, while the gateway retries every 100 ms or so
	type answer struct {
		res  *http.Response
		body []byte
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		var a answer
		if a.res, a.err = g.Client.Get("http://localhost:9080/"); a.err == nil {
			a.body, a.err = io.ReadAll(a.res.Body)
			a.res.Body.Close()
		}
		got <- a
	}()
	time.Sleep(200 * time.Millisecond)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up") })}
	t.Cleanup(func() { srv.Close() })
	go srv.Serve(ln)
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	expect(t, a.res, http.StatusOK, "ok")
	if string(a.body) != "up" {
		t.Errorf("body %q", a.body)
	}
	if e := g.lastEntry(); e.Tries[0].Outcome != "connect_error" {
		t.Errorf("first try should have been refused: %s", e.raw)
	}
}

func TestPostWithoutKeyIsSentOnceOn503(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) })
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	res, _ := post(t, g, "/orders", `{"order":1}`)
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	if up.count.Load() != 1 {
		t.Fatalf("upstream got the POST %d times, want exactly once", up.count.Load())
	}
	if e := g.lastEntry(); e.Denied != "unsafe" || e.Idempotent != "no" {
		t.Errorf("want retry denied as unsafe, log: %s", e.raw)
	}
}

func TestPostWithoutKeyIsSentOnceOnResetAfterWrite(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) { hangUp(w) })
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	res, _ := post(t, g, "/orders", `{"order":2}`)
	expect(t, res, http.StatusBadGateway, "reset")
	if up.count.Load() != 1 {
		t.Fatalf("upstream got the POST %d times after reading it, want exactly once", up.count.Load())
	}
}

func TestPostWithoutKeyIsSentOnceOnReadTimeout(t *testing.T) {
	s := startSilent(t, true)
	g := loadGateway(t, proxySite(s.Addr().String(), `transport resilient {
			timeouts {
				read 150ms
			}
			retry {
				on timeout reset 503
				backoff 5ms 5ms
			}
			breaker off
		}`))
	res, _ := post(t, g, "/orders", `{"order":3}`)
	expect(t, res, http.StatusGatewayTimeout, "read_timeout")
	if n := s.conns.Load(); n != 1 {
		t.Fatalf("upstream got %d connections, want exactly one POST", n)
	}
}

func TestPostWithoutKeyIsRetriedAfterRefusedConnection(t *testing.T) {
	g := loadGateway(t, proxySite(closedPort(t), fastRetry))
	res, _ := post(t, g, "/orders", `{"order":4}`)
	expect(t, res, http.StatusBadGateway, "connect_error")
	if res.Header.Get("X-Attempts") != "3" {
		t.Errorf("attempts %s, want 3: a refused POST never left", res.Header.Get("X-Attempts"))
	}
}

func TestPostWithKeyIsRetriedWithTheSameKey(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "charged")
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	body := strings.Repeat("p", 10<<10)
	res, got := post(t, g, "/charges", body, "Idempotency-Key", "order-42")
	expect(t, res, http.StatusOK, "ok")
	keys, bodies, _ := rec.snapshot()
	if got != "charged" || len(keys) != 3 {
		t.Fatalf("body %q after %d upstream requests, want charged after 3", got, len(keys))
	}
	want := sha256.Sum256([]byte(body))
	for i := range keys {
		if keys[i] != "order-42" || bodies[i] != want {
			t.Errorf("attempt %d: key %q, body intact %v", i+1, keys[i], bodies[i] == want)
		}
	}
	if e := g.lastEntry(); e.Idempotent != "key" {
		t.Errorf("idempotent %q, want key", e.Idempotent)
	}
}

func TestGeneratedKeysAreStableAcrossRetriesAndUnique(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n%2 == 1 { // every request fails once, then succeeds
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 5ms 20ms
				generate_idempotency_key
			}
			breaker off
		}`))
	for i := 0; i < 3; i++ {
		res, _ := post(t, g, "/charges", "x")
		expect(t, res, http.StatusOK, "ok")
	}
	keys, _, _ := rec.snapshot()
	if len(keys) != 6 {
		t.Fatalf("upstream saw %d requests, want 6", len(keys))
	}
	seen := map[string]bool{}
	for i := 0; i < 6; i += 2 {
		if keys[i] == "" || keys[i] != keys[i+1] {
			t.Errorf("request %d: keys %q and %q, want one non-empty key for both tries", i/2, keys[i], keys[i+1])
		}
		if seen[keys[i]] {
			t.Errorf("key %q reused across requests", keys[i])
		}
		seen[keys[i]] = true
	}
	if e := g.lastEntry(); e.Idempotent != "generated" {
		t.Errorf("idempotent %q, want generated", e.Idempotent)
	}
}

func TestRetryAfterDeltaSecondsIsHonoured(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		io.WriteString(w, "ok")
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	res, _ := g.get("/limited")
	expect(t, res, http.StatusOK, "ok")
	_, _, at := rec.snapshot()
	if len(at) != 2 {
		t.Fatalf("upstream saw %d requests, want 2", len(at))
	}
	if gap := at[1].Sub(at[0]); gap < 950*time.Millisecond {
		t.Errorf("retried %v after a 429 with Retry-After: 1", gap)
	}
}

func TestRetryAfterHTTPDateIsHonoured(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n == 1 {
			// an HTTP-date has whole seconds: ask for 2s so at least 1s remains
			w.Header().Set("Retry-After", time.Now().Add(2*time.Second).UTC().Format(http.TimeFormat))
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	res, _ := g.get("/limited")
	expect(t, res, http.StatusOK, "ok")
	_, _, at := rec.snapshot()
	if len(at) != 2 || at[1].Sub(at[0]) < 900*time.Millisecond {
		t.Errorf("want 2 requests at least ~1s apart, got %d: %v", len(at), at)
	}
}

func TestRetryAfterOverTheCapPassesThroughAtOnce(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, "slow down")
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				retry_after 2s
			}
			breaker off
		}`))
	start := time.Now()
	res, body := g.get("/limited")
	if res.StatusCode != 429 || res.Header.Get("Retry-After") != "30" || body != "slow down" {
		t.Fatalf("got %d Retry-After %q body %q; want the upstream's answer unchanged", res.StatusCode, res.Header.Get("Retry-After"), body)
	}
	if d := time.Since(start); d > time.Second || up.count.Load() != 1 {
		t.Errorf("took %v with %d upstream requests; want one request, answered at once", d, up.count.Load())
	}
	if e := g.lastEntry(); e.Denied != "retry_after" {
		t.Errorf("retry_denied %q, want retry_after", e.Denied)
	}
}

func TestRetryAfterMalformedFallsBackToBackoff(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n == 1 {
			w.Header().Set("Retry-After", "soon, please")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	start := time.Now()
	res, _ := g.get("/x")
	expect(t, res, http.StatusOK, "ok")
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v; a malformed Retry-After must not stall the retry", d)
	}
}

func TestRetryWaitThatOverrunsTotalStopsAtOnce(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			timeouts {
				total 2s
			}
			breaker off
		}`))
	start := time.Now()
	res, _ := g.get("/x")
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	if d := time.Since(start); d > time.Second || up.count.Load() != 1 {
		t.Errorf("took %v, %d requests: the 5s wait cannot fit in 2s, so stop now", d, up.count.Load())
	}
	if e := g.lastEntry(); e.Denied != "deadline" {
		t.Errorf("retry_denied %q, want deadline", e.Denied)
	}
}

func TestBudgetCapsRetriesToADeadUpstream(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) })
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 1ms 1ms
				budget 0.2 0
			}
			breaker off
		}`))
	const requests = 50
	for i := 0; i < requests; i++ {
		res, _ := g.get("/dead")
		res.Body.Close()
	}
	got := up.count.Load()
	// without a budget: 150; with it, at most 20% more than the requests
	if got > requests+requests/5+1 {
		t.Fatalf("upstream got %d requests for %d client requests; the budget allows ~%d", got, requests, requests+requests/5)
	}
	if got <= requests {
		t.Fatalf("upstream got %d requests: the budget should still allow some retries", got)
	}
	denied := 0
	for _, e := range g.entries(requests) {
		if e.Denied == "budget" {
			denied++
		}
	}
	if denied == 0 {
		t.Error("no request logged retry_denied=budget")
	}
}

func TestBodyOverMaxBodyStreamsIntactAndIsNotRetried(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) })
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				max_body 1KiB
				backoff 1ms 1ms
			}
			breaker off
		}`))
	body := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64KiB
	req, _ := http.NewRequest(http.MethodPut, "http://localhost:9080/blob", bytes.NewReader(body))
	res, _ := g.do(req)
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	_, bodies, _ := rec.snapshot()
	if len(bodies) != 1 || bodies[0] != sha256.Sum256(body) {
		t.Fatalf("upstream got %d requests (want 1), body intact: %v", len(bodies), len(bodies) == 1 && bodies[0] == sha256.Sum256(body))
	}
	if e := g.lastEntry(); e.Denied != "body" {
		t.Errorf("retry_denied %q, want body", e.Denied)
	}
}

func TestChunkedBodyUnderMaxBodyIsReplayed(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		io.WriteString(w, "stored")
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	body := strings.Repeat("chunk", 1000)
	// an io.Reader of unknown length makes the client send it chunked
	req, _ := http.NewRequest(http.MethodPut, "http://localhost:9080/blob", io.MultiReader(strings.NewReader(body)))
	res, _ := g.do(req)
	expect(t, res, http.StatusOK, "ok")
	_, bodies, _ := rec.snapshot()
	want := sha256.Sum256([]byte(body))
	if len(bodies) != 2 || bodies[0] != want || bodies[1] != want {
		t.Fatalf("upstream got %d bodies; both must be the full body", len(bodies))
	}
}

func TestExhaustedRetriesPassTheLastAnswerThrough(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		w.Header().Set("X-Try", strconv.Itoa(n))
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "busy, try "+strconv.Itoa(n))
	})
	g := loadGateway(t, proxySite(up.addr, fastRetry))
	res, body := g.get("/busy")
	expect(t, res, http.StatusServiceUnavailable, "upstream_status")
	if body != "busy, try 3" || res.Header.Get("X-Try") != "3" || res.Header.Get("X-Attempts") != "3" {
		t.Fatalf("got body %q, X-Try %q after %s attempts; want the third answer unchanged", body, res.Header.Get("X-Try"), res.Header.Get("X-Attempts"))
	}
	e := g.lastEntry()
	if e.Attempts != 3 || len(e.Tries) != 3 || e.Status != 503 {
		t.Errorf("log: %s", e.raw)
	}
	for i, tr := range e.Tries {
		if tr.Outcome != "upstream_status" || tr.Status != 503 || (i > 0) != (tr.Wait > 0) {
			t.Errorf("try %d logged as %+v", i+1, tr)
		}
	}
}
