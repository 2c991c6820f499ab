package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestExamplesAdaptAndProvision adapts every Caddyfile in examples/ and
// provisions the result (every module, ours included) without starting
// listeners.
func TestExamplesAdaptAndProvision(t *testing.T) {
	files, err := filepath.Glob("../examples/*.Caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": f})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("adapt warning: %s", w)
			}
			var cfg caddy.Config
			if err := json.Unmarshal(adapted, &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Fatalf("provision: %v", err)
			}
		})
	}
}

// demoOnTestPorts loads examples/demo.Caddyfile into the test Caddy,
// moved to the test's admin and HTTP ports.
func demoOnTestPorts(t *testing.T) *gateway {
	src, err := os.ReadFile("../examples/demo.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	demo := string(src)
	// the global options block is the first top-level block
	i := strings.Index(demo, "\n}\n")
	if i < 0 {
		t.Fatal("demo.Caddyfile: no global options block")
	}
	// keep the demo's sites, use the test's global options
	sites := strings.ReplaceAll(demo[i+3:], "http://localhost:8080", "http://localhost:9080")
	return loadGateway(t, sites)
}

// TestDemoBehavesAsTheREADMESays runs the README's demo curl lines.
func TestDemoBehavesAsTheREADMESays(t *testing.T) {
	g := demoOnTestPorts(t)
	outcome := func(res *http.Response) string { return res.Header.Get("X-Resilient-Outcome") }

	res, body := g.get("/flaky")
	if res.StatusCode != 200 || outcome(res) != "ok" || res.Header.Get("X-Resilient-Attempts") != "3" {
		t.Errorf("/flaky: %d %s after %s attempts (%q); want 200 ok after 3", res.StatusCode, outcome(res), res.Header.Get("X-Resilient-Attempts"), body)
	}

	req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/orders", strings.NewReader(`{"sku":1}`))
	res, _ = g.do(req)
	if res.StatusCode != 502 || outcome(res) != "reset" {
		t.Errorf("POST /orders without a key: %d %s; want 502 reset, sent once", res.StatusCode, outcome(res))
	}
	req, _ = http.NewRequest(http.MethodPost, "http://localhost:9080/orders", strings.NewReader(`{"sku":1}`))
	req.Header.Set("Idempotency-Key", "order-1")
	res, _ = g.do(req)
	if res.StatusCode != 200 || res.Header.Get("X-Resilient-Attempts") != "2" {
		t.Errorf("POST /orders with a key: %d after %s attempts; want 200 after 2", res.StatusCode, res.Header.Get("X-Resilient-Attempts"))
	}

	for i := 0; i < 2; i++ {
		g.get("/down")
	}
	res, _ = g.get("/down")
	if res.StatusCode != 503 || outcome(res) != "breaker_open" || res.Header.Get("Retry-After") != "5" {
		t.Errorf("/down after failures: %d %s Retry-After %q; want 503 breaker_open with Retry-After 5 (the first open period)", res.StatusCode, outcome(res), res.Header.Get("Retry-After"))
	}

	var wg sync.WaitGroup
	wg.Add(1)
	started := make(chan struct{})
	go func() {
		defer wg.Done()
		close(started)
		if res, err := g.Client.Get("http://localhost:9080/slow"); err == nil {
			res.Body.Close()
		}
	}()
	<-started
	time.Sleep(100 * time.Millisecond)
	// the first call holds the only slot for two seconds
	var got *http.Response
	for i := 0; i < 3; i++ {
		res, _ := g.get("/slow")
		if outcome(res) == "pool_timeout" {
			got = res
			break
		}
	}
	if got == nil || got.StatusCode != 503 {
		t.Error("/slow while another call is in flight: no 503 pool_timeout")
	}
	wg.Wait()

	// eight calls at once to an API that allows 5 a second: the gateway
	// sends it one, and answers the others 429 itself
	statuses := map[int]int{}
	for i := 0; i < 8; i++ {
		res, _ := g.get("/quota")
		statuses[res.StatusCode]++
		if res.StatusCode == 429 && (outcome(res) != "rate_limited" || res.Header.Get("Retry-After") == "") {
			t.Errorf("/quota refused: %s, Retry-After %q", outcome(res), res.Header.Get("Retry-After"))
		}
	}
	if statuses[200] < 1 || statuses[429] < 1 || statuses[200]+statuses[429] != 8 {
		t.Errorf("/quota: %v", statuses)
	}
	req, _ = http.NewRequest(http.MethodGet, "http://127.0.0.1:9005/", nil)
	req.Header.Set("X-Chaos-Stats", "1")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Refused int `json:"quota_refused"`
	}
	json.NewDecoder(res.Body).Decode(&stats)
	res.Body.Close()
	if stats.Refused != 0 {
		t.Errorf("the quota API refused %d calls: the gateway sent above its limit", stats.Refused)
	}

	// a read API that goes down keeps answering with its last good answer
	res, fresh := g.get("/rates")
	if res.StatusCode != 200 || outcome(res) != "ok" || !strings.HasPrefix(fresh, "EUR/USD") {
		t.Fatalf("/rates: %d %s %q", res.StatusCode, outcome(res), fresh)
	}
	req, _ = http.NewRequest(http.MethodGet, "http://localhost:9080/rates", nil)
	req.Header.Set("X-Demo-Down", "1")
	res, body = g.do(req)
	if res.StatusCode != 200 || outcome(res) != "stale" || res.Header.Get("X-Resilient-Fallback") != "stale" ||
		res.Header.Get("Age") == "" || body != fresh {
		t.Errorf("/rates while the API is down: %d %s fallback %q Age %q %q; want the kept answer, stale",
			res.StatusCode, outcome(res), res.Header.Get("X-Resilient-Fallback"), res.Header.Get("Age"), body)
	}
}
