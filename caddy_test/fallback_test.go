package integration

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Fallback (SPEC §15): the last good answer of each read is kept as it
// streams and served, with Age and outcome stale, when the upstream
// fails; never across scope values, never cut, never too old.

// flipUpstream answers each request as its mode says: healthy answers
// name the path, the caller's Authorization and the count, so that a
// kept answer is told from a fresh one.
type flipUpstream struct {
	*upstream
	mode atomic.Value // "ok", "503", "hang", "reset"
}

func startFlip(t *testing.T, extra func(w http.ResponseWriter, r *http.Request) bool) *flipUpstream {
	f := &flipUpstream{}
	f.mode.Store("ok")
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	f.upstream = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch f.mode.Load().(string) {
		case "503":
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case "hang":
			select {
			case <-r.Context().Done():
			case <-stop:
			}
			return
		case "reset":
			hangUp(w)
			return
		}
		if extra != nil && extra(w, r) {
			return
		}
		w.Header().Set("X-Served", strconv.FormatInt(f.count.Load(), 10))
		fmt.Fprintf(w, "%s for %q", r.URL.Path, r.Header.Get("Authorization"))
	})
	return f
}

// fallbackSite is callingSite with a fallback block and no breaker.
func fallbackSite(up, fallback string) string {
	return callingSite(up, fmt.Sprintf("breaker off\nfallback {\n%s\n}", fallback))
}

// getWith GETs path with the headers given as name, value pairs.
func getWith(t *testing.T, g *gateway, path string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://localhost:9080"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return g.do(req)
}

func TestFallbackServesTheKeptAnswerWhenTheUpstreamFails(t *testing.T) {
	up := startFlip(t, nil)
	g := loadGateway(t, callingSite(up.addr, "breaker off\ndeadline\nfallback"))
	res, fresh := getWith(t, g, "/rates", "Authorization", "alice")
	if v := verdictOf(res); v.status != 200 || v.outcome != "ok" {
		t.Fatalf("healthy: %+v", v)
	}
	time.Sleep(1100 * time.Millisecond) // an Age of a second
	for _, mode := range []string{"503", "reset", "hang"} {
		up.mode.Store(mode)
		start := time.Now()
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/rates", nil)
		req.Header.Set("Authorization", "alice")
		if mode == "hang" {
			req.Header.Set("X-Request-Timeout", "0.3")
		}
		res, body := g.do(req)
		took := time.Since(start)
		v := verdictOf(res)
		if v.status != 200 || v.outcome != "stale" || body != fresh || res.Header.Get("X-Fallback") != "stale" {
			t.Fatalf("%s: %+v fallback %q body %q, want the kept answer %q", mode, v, res.Header.Get("X-Fallback"), body, fresh)
		}
		if age, err := strconv.Atoi(res.Header.Get("Age")); err != nil || age < 1 {
			t.Fatalf("%s: Age %q, want whole seconds since it was kept (>= 1)", mode, res.Header.Get("Age"))
		}
		if mode == "hang" && took > 900*time.Millisecond {
			t.Fatalf("the caller's deadline was 300ms; the kept answer came after %v", took)
		}
		if mode == "hang" && v.executed != "maybe" || mode == "503" && v.executed != "no" {
			t.Fatalf("%s: executed %q, want what the failure says", mode, v.executed)
		}
	}
	scrape := metricsScrape(t)
	if n := metricsValue(scrape, "caddy_resilient_fallback_total", map[string]string{"upstream": up.addr, "result": "stale"}); n != 3 {
		t.Fatalf("fallback_total{stale} %v, want 3", n)
	}
	if n := metricsValue(scrape, "caddy_resilient_fallback_records", nil); n < 1 {
		t.Fatalf("fallback_records %v, want the kept answer counted", n)
	}
	if e := g.lastEntry(); e.Outcome != "stale" || !strings.Contains(e.raw, `"fallback":"stale"`) {
		t.Fatalf("log entry: %s", e.raw)
	}
}

func TestFallbackServesAtOnceWhileTheBreakerIsOpen(t *testing.T) {
	up := startFlip(t, nil)
	g := loadGateway(t, callingSite(up.addr, "breaker {\n consecutive_failures 1\n open_for 30s\n}\nfallback"))
	_, fresh := getWith(t, g, "/catalog")
	up.mode.Store("503")
	getWith(t, g, "/other") // opens the breaker; nothing is kept for /other
	sent := up.count.Load()
	res, body := getWith(t, g, "/catalog")
	if v := verdictOf(res); v.status != 200 || v.outcome != "stale" || v.executed != "no" || body != fresh {
		t.Fatalf("with the breaker open: %+v %q, want the kept answer at once", v, body)
	}
	if up.count.Load() != sent {
		t.Fatal("a request was sent while the breaker was open")
	}
	res, _ = getWith(t, g, "/other")
	if v := verdictOf(res); v.status != 503 || v.outcome != "breaker_open" || res.Header.Get("X-Fallback") != "miss" {
		t.Fatalf("nothing kept: %+v fallback %q, want breaker_open and miss", v, res.Header.Get("X-Fallback"))
	}
}

// An answer kept for one caller is never served to another.
func TestFallbackNeverCrossesScopes(t *testing.T) {
	up := startFlip(t, nil)
	g := loadGateway(t, fallbackSite(up.addr, ""))
	getWith(t, g, "/me", "Authorization", "alice")
	up.mode.Store("503")
	res, body := getWith(t, g, "/me", "Authorization", "bob")
	if v := verdictOf(res); v.status != 503 || v.outcome == "stale" || strings.Contains(body, "alice") {
		t.Fatalf("bob got %+v %q: alice's answer crossed scopes", v, body)
	}
	res, body = getWith(t, g, "/me", "Authorization", "alice")
	if v := verdictOf(res); v.outcome != "stale" || !strings.Contains(body, `"alice"`) {
		t.Fatalf("alice got %+v %q, want her own kept answer", v, body)
	}
	// another target, another host: no answer of /me
	res, _ = getWith(t, g, "/me?x=1", "Authorization", "alice")
	if verdictOf(res).outcome == "stale" {
		t.Fatal("the answer of /me was served for /me?x=1")
	}
}

// What the request and the answer say about keeping and serving.
func TestFallbackRespectsCacheControlCookiesAndVary(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/no-store":
			w.Header().Set("Cache-Control", "no-store")
		case "/cookie":
			w.Header().Set("Set-Cookie", "session=1")
		case "/vary-star":
			w.Header().Set("Vary", "*")
		case "/vary":
			w.Header().Set("Vary", "Accept-Language")
			io.WriteString(w, "in "+r.Header.Get("Accept-Language"))
			return true
		case "/short-lived":
			w.Header().Set("Cache-Control", "max-age=60, stale-if-error=1")
		case "/teapot":
			w.WriteHeader(http.StatusTeapot)
		}
		return false
	})
	g := loadGateway(t, fallbackSite(up.addr, ""))
	for _, p := range []string{"/no-store", "/cookie", "/vary-star", "/short-lived", "/teapot", "/plain"} {
		getWith(t, g, p)
	}
	getWith(t, g, "/vary", "Accept-Language", "fr")
	getWith(t, g, "/vary", "Accept-Language", "de")
	getWith(t, g, "/asked-not-to-keep", "Cache-Control", "no-store")
	time.Sleep(1100 * time.Millisecond)
	up.mode.Store("503")
	for _, tc := range []struct {
		path   string
		header []string
		stale  bool
		body   string
	}{
		{"/no-store", nil, false, ""},
		{"/cookie", nil, false, ""},
		{"/vary-star", nil, false, ""},
		{"/short-lived", nil, false, ""}, // stale-if-error=1 ran out
		{"/teapot", nil, false, ""},      // not a status worth keeping
		{"/asked-not-to-keep", nil, false, ""},
		{"/plain", []string{"Cache-Control", "no-cache"}, false, ""},
		{"/plain", []string{"Cache-Control", "max-stale=0"}, false, ""},
		{"/plain", nil, true, ""},
		{"/vary", []string{"Accept-Language", "fr"}, true, "in fr"},
		{"/vary", []string{"Accept-Language", "de"}, true, "in de"},
		{"/vary", []string{"Accept-Language", "it"}, false, ""},
	} {
		res, body := getWith(t, g, tc.path, tc.header...)
		got := verdictOf(res).outcome == "stale"
		if got != tc.stale || tc.body != "" && body != tc.body {
			t.Errorf("%s %v: outcome %q body %q, want stale %v %q", tc.path, tc.header, verdictOf(res).outcome, body, tc.stale, tc.body)
		}
	}
}

// An answer cut short is never kept; an answer older than stale is
// never served; an answer with hostile headers is not kept.
func TestFallbackNeverServesCutOrOldAnswers(t *testing.T) {
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/cut":
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, strings.Repeat("x", 50))
			w.(http.Flusher).Flush()
			hangUp(w)
			return true
		case "/hostile":
			for i := range 300 {
				w.Header().Set(fmt.Sprintf("X-H%d", i), "v")
			}
		}
		return false
	})
	g := loadGateway(t, fallbackSite(up.addr, "stale 1s\nmax_response 64KiB"))
	for _, p := range []string{"/cut", "/hostile", "/old"} {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080"+p, nil)
		if res, err := g.Client.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}
	up.mode.Store("503")
	for _, p := range []string{"/cut", "/hostile"} {
		if res, body := getWith(t, g, p); verdictOf(res).outcome == "stale" {
			t.Errorf("%s was served from the fallback: %q", p, body)
		}
	}
	time.Sleep(1100 * time.Millisecond)
	if res, _ := getWith(t, g, "/old"); verdictOf(res).outcome == "stale" {
		t.Error("an answer older than stale was served")
	}
}

// A body larger than max_response streams to its client whole, and is
// not kept.
func TestFallbackLargeAnswersStreamAndAreNotKept(t *testing.T) {
	big := strings.Repeat("0123456789", 10000) // 100 kB
	up := startFlip(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, big)
		return true
	})
	g := loadGateway(t, fallbackSite(up.addr, "max_response 64KiB"))
	if _, body := getWith(t, g, "/big"); body != big {
		t.Fatalf("the large answer came as %d bytes, want %d", len(body), len(big))
	}
	up.mode.Store("503")
	if res, _ := getWith(t, g, "/big"); verdictOf(res).outcome == "stale" {
		t.Fatal("an answer larger than max_response was kept")
	}
}

// A HEAD's answer is kept on its own, and served without a body.
func TestFallbackHeadIsKeptOnItsOwn(t *testing.T) {
	up := startFlip(t, nil)
	g := loadGateway(t, fallbackSite(up.addr, ""))
	req, _ := http.NewRequest(http.MethodHead, "http://localhost:9080/h", nil)
	g.do(req)
	up.mode.Store("503")
	req, _ = http.NewRequest(http.MethodHead, "http://localhost:9080/h", nil)
	res, body := g.do(req)
	if v := verdictOf(res); v.status != 200 || v.outcome != "stale" || body != "" {
		t.Fatalf("HEAD: %+v %q", v, body)
	}
	// the GET of the same target has no answer of its own
	if res, _ := getWith(t, g, "/h"); verdictOf(res).outcome == "stale" {
		t.Fatal("a HEAD's kept answer was served to a GET")
	}
}
