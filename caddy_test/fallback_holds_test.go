package integration

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fallback (SPEC §15) under attacks it withstands: eviction at the
// memory bound, answers that stall or lose their client half-way,
// statuses and failures that must not fall back, gzip variants, and
// many clients keeping the same target at once.

// At the bound of one transport the oldest answers go first, and every
// answer served is byte for byte the one kept for its own target.
func TestFallbackEvictionKeepsTheNewestAndNeverMixesBytes(t *testing.T) {
	body := func(p string) string { return p + strings.Repeat(string(rune('a'+len(p)%26)), 2000+len(p)) }
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, body(r.URL.Path))
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\nfallback {\nmax_memory 64KiB\nmax_response 8KiB\n}"))
	const n = 100
	for i := range n {
		getHost(t, g, "", fmt.Sprintf("/hold-k%d", i))
	}
	if b := metricsValue(metricsScrape(t), "caddy_resilient_fallback_bytes", nil); b > 64<<10 {
		t.Fatalf("fallback_bytes %v past max_memory 64KiB", b)
	}
	up.mode.Store("503")
	var kept []int
	for i := range n {
		p := fmt.Sprintf("/hold-k%d", i)
		res, got := getHost(t, g, "", p)
		if res.Header.Get("X-Outcome") != "stale" {
			continue
		}
		if got != body(p) {
			t.Fatalf("%s: served %d bytes that are not its kept answer", p, len(got))
		}
		kept = append(kept, i)
	}
	t.Logf("kept %d of %d", len(kept), n)
	if len(kept) == 0 || kept[len(kept)-1] != n-1 || kept[0] < n-len(kept) {
		t.Fatalf("kept %v: want the newest answers, oldest dropped first", kept)
	}
}

// An answer whose body stalls past `read` ends read_timeout and is not
// kept; nor is one whose client stopped reading half-way.
func TestFallbackStalledOrAbandonedBodiesAreNotKept(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 256<<10/16) // 256KiB
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/hold-stall":
			w.Header().Set("Content-Length", "8")
			io.WriteString(w, "half")
			w.(http.Flusher).Flush()
			time.Sleep(600 * time.Millisecond)
			io.WriteString(w, "done")
		case "/hold-abandoned":
			for i := 0; i < len(big); i += 4096 {
				if _, err := io.WriteString(w, big[i:i+4096]); err != nil {
					return true
				}
				w.(http.Flusher).Flush()
				time.Sleep(2 * time.Millisecond)
			}
		}
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\ntimeouts {\nread 200ms\n}\nfallback {\nmax_response 1MiB\n}"))
	for _, p := range []string{"/hold-stall", "/hold-abandoned"} {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080"+p, nil)
		res, err := g.Client.Do(req)
		if err != nil {
			continue
		}
		if p == "/hold-abandoned" {
			io.CopyN(io.Discard, res.Body, 10)
		} else {
			io.Copy(io.Discard, res.Body)
		}
		res.Body.Close()
	}
	time.Sleep(700 * time.Millisecond)
	up.mode.Store("503")
	for _, p := range []string{"/hold-stall", "/hold-abandoned"} {
		res, got := getHost(t, g, "", p)
		if res.Header.Get("X-Outcome") == "stale" && (p == "/hold-stall" || got != big) {
			t.Fatalf("%s: served %d bytes from an answer that did not end well", p, len(got))
		}
	}
}

// Failures not in `on` do not fall back; those in it do.
func TestFallbackOnlyWhatOnSays(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, "kept "+r.URL.Path)
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\nfallback {\non 503 rate_limited\n}\nrate_limit {\nrate 1/h\nburst 2\nmax_wait 0\n}"))
	getHost(t, g, "", "/hold-a")
	up.mode.Store("reset")
	if res, _ := getHost(t, g, "", "/hold-a"); res.Header.Get("X-Outcome") != "reset" {
		t.Fatalf("reset, not in on: %d %s", res.StatusCode, res.Header.Get("X-Outcome"))
	}
	// the bucket is empty now: rate_limited is in on
	if res, body := getHost(t, g, "", "/hold-a"); res.Header.Get("X-Outcome") != "stale" || body != "kept /hold-a" {
		t.Fatalf("rate_limited: %d %s %q", res.StatusCode, res.Header.Get("X-Outcome"), body)
	}
}

// 206 and 304 answers are not kept; a gzip variant is served only to a
// caller of the same Accept-Encoding.
func TestFallbackPartialNotModifiedAndGzipVariants(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	io.WriteString(zw, "compressed rates")
	zw.Close()
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/hold-range":
			w.Header().Set("Content-Range", "bytes 0-3/10")
			w.WriteHeader(http.StatusPartialContent)
			io.WriteString(w, "0123")
		case "/hold-cond":
			w.WriteHeader(http.StatusNotModified)
		case "/hold-gz":
			w.Header().Set("Vary", "Accept-Encoding")
			if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
				w.Header().Set("Content-Encoding", "gzip")
				w.Write(gz.Bytes())
			} else {
				io.WriteString(w, "plain rates")
			}
		}
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\nfallback"))
	getHost(t, g, "", "/hold-range", "Range", "bytes=0-3")
	getHost(t, g, "", "/hold-cond", "If-None-Match", `"x"`)
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/hold-gz", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	g.do(req)
	up.mode.Store("503")
	for _, p := range []string{"/hold-range", "/hold-cond"} {
		if res, _ := getHost(t, g, "", p); res.Header.Get("X-Outcome") == "stale" {
			t.Fatalf("%s: a %s answer was kept", p, p)
		}
	}
	// a caller that did not ask for gzip (Go's client would add it: ask
	// for identity explicitly)
	res, body := getHost(t, g, "", "/hold-gz", "Accept-Encoding", "identity")
	if res.Header.Get("X-Outcome") == "stale" || res.Header.Get("Content-Encoding") == "gzip" {
		t.Fatalf("identity caller got %s %q encoded %q", res.Header.Get("X-Outcome"), body, res.Header.Get("Content-Encoding"))
	}
}

// Many clients read the same target at once while the upstream changes
// its answer; once it fails, the answer served is one whole answer.
func TestFallbackConcurrentKeepsServeOneWholeAnswer(t *testing.T) {
	var n atomic.Int64
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		v := n.Add(1)
		s := strings.Repeat(fmt.Sprintf("%04d", v), 4096)
		for i := 0; i < len(s); i += 1024 {
			io.WriteString(w, s[i:i+1024])
			w.(http.Flusher).Flush()
		}
		return true
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\nfallback"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/hold-same", nil)
				if res, err := g.Client.Do(req); err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	up.mode.Store("503")
	res, body := getHost(t, g, "", "/hold-same")
	if res.Header.Get("X-Outcome") != "stale" || len(body) != 16384 || body != strings.Repeat(body[:4], 4096) {
		t.Fatalf("got %s, %d bytes: not one whole answer", res.Header.Get("X-Outcome"), len(body))
	}
}

// With retries, the kept answer comes once they are spent, counted once
// in requests_total and fallback_total.
func TestFallbackAfterRetriesCountedOnce(t *testing.T) {
	var raw atomic.Int64
	up := startRaw(t, func(_ int64, c net.Conn, _ *http.Request) {
		if raw.Add(1) == 1 {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkept")
			return
		}
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
	})
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry {\nattempts 3\nbackoff 1ms 2ms\n}\nfallback"))
	getHost(t, g, "", "/hold-r")
	before := metricsScrape(t)
	res, body := getHost(t, g, "", "/hold-r")
	if res.Header.Get("X-Outcome") != "stale" || body != "kept" || raw.Load() != 4 {
		t.Fatalf("got %s %q after %d upstream requests, want the kept answer after 3 attempts", res.Header.Get("X-Outcome"), body, raw.Load()-1)
	}
	after := metricsScrape(t)
	for _, m := range []struct {
		name   string
		labels map[string]string
	}{
		{"caddy_resilient_requests_total", map[string]string{"upstream": up.addr, "outcome": "stale"}},
		{"caddy_resilient_fallback_total", map[string]string{"upstream": up.addr, "result": "stale"}},
	} {
		if d := metricsValue(after, m.name, m.labels) - max(metricsValue(before, m.name, m.labels), 0); d != 1 {
			t.Fatalf("%s %v moved by %v, want 1", m.name, m.labels, d)
		}
	}
}

// With hedging, and with a pool at its limit, the kept answer comes by
// the caller's deadline.
func TestFallbackHedgedAndPooledServeByTheDeadline(t *testing.T) {
	up := startFlip(t, nil)
	g := loadGateway(t, edgeSite(up.addr, "", "breaker off\nretry off\ndeadline\nhedge {\nafter 50ms\nmax 2\n}\npool {\nmax_conns 1\n}\ntimeouts {\npool 5s\n}\nfallback"))
	_, fresh := getHost(t, g, "", "/hold-hedged")
	up.mode.Store("hang")
	for i := range 2 {
		start := time.Now()
		res, body := getHost(t, g, "", "/hold-hedged", "X-Request-Timeout", "0.3")
		if took := time.Since(start); res.Header.Get("X-Outcome") != "stale" || body != fresh || took > 800*time.Millisecond {
			t.Fatalf("request %d: %s %q after %v, want the kept answer by the 300ms deadline", i, res.Header.Get("X-Outcome"), body, took)
		}
	}
}
