package integration

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// Every request the upstream receives is one of the transport's
// attempts (SPEC §4 step 5). net/http re-sends a request it deems
// replayable (a GET, or one carrying Idempotency-Key) when a reused
// keep-alive connection closes after the request went out; such a
// re-send would skip the attempt cap, backoff, budget, breaker and
// metrics, so the transport stops it and makes its own decision.

// secondRequestCloser is a raw HTTP/1.1 upstream that answers the first
// request on each connection with 200 and keeps the connection; the
// second request on a connection it reads whole, and then closes the
// connection without an answer. It counts the deliveries of each path.
type secondRequestCloser struct {
	addr string
	mu   sync.Mutex
	got  map[string]int
}

func startSecondRequestCloser(t *testing.T) *secondRequestCloser {
	t.Helper()
	ln := freshLoopback(t)
	s := &secondRequestCloser{addr: ln.Addr().String(), got: map[string]int{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *secondRequestCloser) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for n := 1; ; n++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		s.mu.Lock()
		s.got[req.URL.Path]++
		s.mu.Unlock()
		if n == 2 {
			return // read whole, then hung up on
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

func (s *secondRequestCloser) deliveries(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[path]
}

func TestResendNoHiddenResendOfAGetWithRetriesOff(t *testing.T) {
	up := startSecondRequestCloser(t)
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry off
			breaker off
		}`))
	res, _ := g.get("/warm") // leaves a keep-alive connection in the pool
	expect(t, res, http.StatusOK, "ok")
	res, _ = g.get("/probe") // goes out on it, and the upstream hangs up
	expect(t, res, http.StatusBadGateway, "reset")
	if n := up.deliveries("/probe"); n != 1 {
		t.Fatalf("the upstream got the GET %d times with retries off; want once", n)
	}
}

func TestResendEveryDeliveryIsACountedAttempt(t *testing.T) {
	up := startSecondRequestCloser(t)
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 5ms 10ms
			}
			breaker off
		}`))
	for _, tc := range []struct {
		path   string
		method string
		key    string
	}{
		{"/get", http.MethodGet, ""},
		{"/order", http.MethodPost, "order-7"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			res, _ := g.get("/warm-" + tc.method)
			expect(t, res, http.StatusOK, "ok")
			var body io.Reader
			if tc.method == http.MethodPost {
				body = stringsReader(`{"sku":1}`)
			}
			req, _ := http.NewRequest(tc.method, "http://localhost:9080"+tc.path, body)
			if tc.key != "" {
				req.Header.Set("Idempotency-Key", tc.key)
			}
			res, _ = g.do(req)
			expect(t, res, http.StatusOK, "ok")
			e := g.lastEntry()
			if got := up.deliveries(tc.path); got != e.Attempts || e.Attempts != 2 {
				t.Fatalf("the upstream got %d deliveries, the transport counted %d attempts (want 2 and 2): %s",
					got, e.Attempts, e.raw)
			}
			if e.Tries[0].Outcome != "reset" {
				t.Errorf("first try %q, want reset", e.Tries[0].Outcome)
			}
		})
	}
}

func stringsReader(s string) io.Reader { return strings.NewReader(s) }
