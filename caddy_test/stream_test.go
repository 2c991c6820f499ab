package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

// The request body is never held back (SPEC §4 step 2): it goes to the
// upstream as the client sends it, as with `transport http`. These tests
// mirror Caddy's own integration tests (caddytest/integration in the
// caddy module) with `transport resilient` in place of `transport http`.

// echoUpstream answers at once, flushes its headers before it reads the
// body, then echoes the body back as it comes: a bidirectional stream.
func echoUpstream(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_ = http.NewResponseController(w).Flush()
	buf := make([]byte, 4096)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
			_ = http.NewResponseController(w).Flush()
		}
		if err != nil {
			return
		}
	}
}

// streamExchange sends a request whose body the client writes only once
// the response headers are in, and returns what came back.
func streamExchange(t *testing.T, client *http.Client, method, url string, header http.Header) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, method, url, pr)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("no response headers before the body was sent: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	const msg = "some data to be echoed"
	go func() {
		fmt.Fprint(pw, msg)
		pw.Close()
	}()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
	return string(got)
}

func TestStreamH2ToH2CWaitsForHeadersBeforeTheBody(t *testing.T) {
	// TestH2ToH2CStream: a PUT whose client sends its body only once it
	// has the response headers, to an h2c upstream
	ln := freshLoopback(t)
	srv := &http.Server{Handler: h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			t.Errorf("upstream got HTTP/%d, want h2c", r.ProtoMajor)
		}
		echoUpstream(w, r)
	}), &http2.Server{})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	up := &upstream{addr: ln.Addr().String()}
	// HTTP/2 from the client too, cleartext here, so that the test needs
	// no certificate: both legs are streams
	g := loadGatewayWith(t, `servers {
		protocols h1 h2 h2c
	}`, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient {
			versions h2c 2
		}
	}
}
`, up.addr))
	client := &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:9080")
		},
	}}
	streamExchange(t, client, http.MethodPut, "http://localhost:9080/tov2ray", http.Header{"Accept-Encoding": {"identity"}})
	e := g.lastEntry()
	if e.Outcome != "ok" || e.Attempts != 1 {
		t.Errorf("log entry: %s", e.raw)
	}
}

func TestStreamHTTP1WaitsForHeadersBeforeTheBody(t *testing.T) {
	up := startUpstream(t, echoUpstream)
	g := loadGatewayWith(t, `servers {
		enable_full_duplex
	}`, proxySite(up.addr, `transport resilient`))
	for _, tc := range []struct {
		method string
		header http.Header
	}{
		{http.MethodPut, nil},
		{http.MethodPost, nil},
		{http.MethodPost, http.Header{"Idempotency-Key": {"k-1"}}},
	} {
		t.Run(tc.method+fmt.Sprint(len(tc.header)), func(t *testing.T) {
			streamExchange(t, g.Client, tc.method, "http://localhost:9080/stream", tc.header)
		})
	}
	if n := up.count.Load(); n != 3 {
		t.Errorf("upstream got %d requests, want 3", n)
	}
}

func TestStreamStalledUploadReachesTheUpstreamAndIsTheClients(t *testing.T) {
	// TestReverseProxyRequestBodyTimeout: a stalled upload reaches the
	// upstream as far as the client sent it, and is cut there
	type upload struct {
		n   int64
		err error
	}
	got := make(chan upload, 1)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		got <- upload{n, err}
		w.WriteHeader(http.StatusNoContent)
	})
	g := loadGatewayWith(t, `servers {
		timeouts {
			read_body 300ms
		}
	}`, proxySite(up.addr, `transport resilient`))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(make([]byte, 1024)) // then nothing: the body stalls
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost:9080/upload", pr)
	req.ContentLength = 100 << 10
	req.Header.Set("Idempotency-Key", "upload-1") // retryable: the copy is kept
	res, err := g.Client.Do(req)
	if err != nil {
		t.Fatalf("no response to the timed-out upload: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 499 && res.StatusCode != http.StatusBadGateway && res.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("status %d", res.StatusCode)
	}
	select {
	case u := <-got:
		if u.err == nil || u.n < 1024 || u.n >= req.ContentLength {
			t.Errorf("upstream read %d bytes, error %v: want the 1024 bytes sent, then a cut", u.n, u.err)
		}
	case <-ctx.Done():
		t.Fatal("the upload never reached the upstream")
	}
	e := g.lastEntry()
	if e.Outcome != "canceled" || e.Attempts != 1 {
		t.Errorf("a body the client failed to send is the client's doing, sent once: %s", e.raw)
	}
	if up.count.Load() != 1 {
		t.Errorf("upstream got %d requests, want 1", up.count.Load())
	}
}

func TestStreamResponseHandlingLikeTransportHTTP(t *testing.T) {
	// TestReverseProxyResponseHandling with the default breaker: three
	// 500s, then a connection dropped on every try. The breaker opens
	// during the retries of /empty; the client still gets the 502 the
	// upstream's dropped connection means, not breaker_open.
	mux := http.NewServeMux()
	mux.HandleFunc("/header", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "500")
		w.WriteHeader(500)
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("/partial", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "500")
		w.WriteHeader(500)
		io.WriteString(w, "partial")
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("/full", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "500")
		w.WriteHeader(500)
		for range 125 {
			io.WriteString(w, "full")
		}
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	})
	up := startUpstream(t, mux.ServeHTTP)
	g := loadGateway(t, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient
	}
}
`, up.addr))
	for _, tc := range []struct {
		path    string
		status  int
		body    string
		cutBody bool
	}{
		{"/header", 500, "", true},
		{"/partial", 500, "partial", true},
		{"/full", 500, strings.Repeat("full", 125), false},
		{"/empty", 502, "", false},
	} {
		res, err := g.Client.Get("http://localhost:9080" + tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.status {
			t.Fatalf("%s: status %d, want %d", tc.path, res.StatusCode, tc.status)
		}
		if (err != nil) != tc.cutBody {
			t.Fatalf("%s: body error %v, cut %v", tc.path, err, tc.cutBody)
		}
		if !tc.cutBody && tc.status == 500 && string(body) != tc.body {
			t.Fatalf("%s: body %q", tc.path, body)
		}
	}
	e := g.lastEntry()
	if e.Path != "/empty" || e.Outcome != "reset" || e.Denied != "breaker" || e.Attempts != 2 {
		t.Errorf("/empty: want reset after 2 tries, the third refused by the breaker that opened: %s", e.raw)
	}
}

func TestStreamRetryMatchCombinedSeesTheUpstreamsStatus(t *testing.T) {
	// TestReverseProxyRetryMatchCombined: lb_retry_match on the status
	// must see the upstream's 502, also once the breaker opened mid-retry
	bad := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	good := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	g := loadGateway(t, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s %s {
		lb_policy round_robin
		lb_retries 1
		lb_retry_match {
			expression `+"`path('/retry*') && {rp.status_code} in [502, 503]`"+`
		}
		transport resilient
	}
}
`, good.addr, bad.addr))
	g.AssertGetResponse("http://localhost:9080/retry", 200, "ok")
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/other", nil)
	g.AssertResponse(req, 502, "")
}

func TestStreamReplayedBodiesAreByteIdentical(t *testing.T) {
	rec := new(recorder)
	up := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 5ms 10ms
				max_body 64KiB
			}
			breaker off
		}`))
	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
	}{
		{"small", []byte(`{"order":1}`), false},
		{"exactly max_body", bytes.Repeat([]byte("0123456789abcdef"), 4096), false},
		{"chunked", bytes.Repeat([]byte("z"), 40<<10), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = bytes.NewReader(tc.body)
			if tc.chunked {
				body = io.MultiReader(body) // no length known: sent chunked
			}
			req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/orders", body)
			req.Header.Set("Idempotency-Key", "order-"+tc.name)
			res, _ := g.do(req)
			expect(t, res, http.StatusOK, "ok")
			if res.Header.Get("X-Attempts") != "2" {
				t.Fatalf("attempts %s, want 2", res.Header.Get("X-Attempts"))
			}
			_, sums, _ := rec.snapshot()
			want := sha256.Sum256(tc.body)
			last := sums[len(sums)-2:]
			if last[0] != want || last[1] != want {
				t.Fatalf("the upstream got bodies that differ from what the client sent")
			}
		})
	}
}

func TestStreamBreakerOpeningMidRetryPassesTheUpstreamsAnswer(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "payments")
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, `{"error":"card processor unavailable"}`)
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			retry {
				backoff 5ms 10ms
			}
			breaker {
				consecutive_failures 2
			}
		}`))
	res, body := g.get("/charge")
	if res.StatusCode != http.StatusBadGateway || res.Header.Get("X-Upstream") != "payments" ||
		body != `{"error":"card processor unavailable"}` {
		t.Fatalf("got %d %q (X-Upstream %q): want the upstream's 502 as it sent it", res.StatusCode, body, res.Header.Get("X-Upstream"))
	}
	if res.Header.Get("X-Outcome") != "upstream_status" || res.Header.Get("X-Attempts") != "2" {
		t.Errorf("outcome %q attempts %q", res.Header.Get("X-Outcome"), res.Header.Get("X-Attempts"))
	}
	if e := g.lastEntry(); e.Denied != "breaker" {
		t.Errorf("want retry_denied breaker: %s", e.raw)
	}
	if up.count.Load() != 2 {
		t.Errorf("upstream got %d requests, want 2", up.count.Load())
	}
	if v := metricsValue(metricsScrape(t), "caddy_resilient_retries_denied_total", map[string]string{"reason": "breaker", "upstream": up.addr}); v != 1 {
		t.Errorf("retries_denied_total{reason=breaker} = %v, want 1", v)
	}
	breakerExpectOpen(t, g)
}

func TestStreamSlowFailuresTripTheBreaker(t *testing.T) {
	// attempts that hang for longer than the whole window still count
	s := startSilent(t, true)
	g := loadGateway(t, proxySite(s.Addr().String(), `transport resilient {
			timeouts {
				attempt 300ms
			}
			retry off
			breaker {
				window 100ms
				consecutive_failures 2
			}
		}`))
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/", nil)
			res, err := g.Client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
			if res.StatusCode != http.StatusGatewayTimeout || res.Header.Get("X-Outcome") != "attempt_timeout" {
				t.Errorf("status %d outcome %q, want 504 attempt_timeout", res.StatusCode, res.Header.Get("X-Outcome"))
			}
		}()
	}
	wg.Wait()
	breakerExpectOpen(t, g)
	if n := s.conns.Load(); n != 2 {
		t.Errorf("upstream got %d connections, want 2", n)
	}
}
