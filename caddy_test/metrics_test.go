package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// metricsScrape reads the admin endpoint's /metrics.
func metricsScrape(t *testing.T) string {
	t.Helper()
	res, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var metricsLine = regexp.MustCompile(`^(\w+)(?:\{([^}]*)\})? (\S+)$`)

// metricsValue returns the value of the series name{labels}; -1 when
// it is not there.
func metricsValue(scrape, name string, labels map[string]string) float64 {
	for _, line := range strings.Split(scrape, "\n") {
		m := metricsLine.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			continue
		}
		got := map[string]string{}
		for _, kv := range strings.Split(m[2], ",") {
			if kv == "" {
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			got[k] = strings.Trim(v, `"`)
		}
		match := len(got) == len(labels)
		for k, v := range labels {
			match = match && got[k] == v
		}
		if match {
			f, _ := strconv.ParseFloat(m[3], 64)
			return f
		}
	}
	return -1
}

// metricsSum adds up the values of every series of name whose labels
// include labels (other labels, such as outcome, may take any value); 0
// when there is none.
func metricsSum(scrape, name string, labels map[string]string) float64 {
	sum := 0.0
	for _, line := range strings.Split(scrape, "\n") {
		m := metricsLine.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			continue
		}
		got := map[string]string{}
		for _, kv := range strings.Split(m[2], ",") {
			k, v, _ := strings.Cut(kv, "=")
			got[k] = strings.Trim(v, `"`)
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if match {
			f, _ := strconv.ParseFloat(m[3], 64)
			sum += f
		}
	}
	return sum
}

func TestMetricsMoveAsDocumented(t *testing.T) {
	ok := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	rec := new(recorder)
	flaky := scripted(t, rec, func(n int, w http.ResponseWriter) {
		if n == 1 || n == 3 { // the GET's first try, and the POST
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	var healthy atomic.Bool
	tripping := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	route := func(path, up, transport string) string {
		return "\thandle " + path + " {\n\t\treverse_proxy " + up + " {\n\t\t\ttransport resilient {\n" + transport + "\n\t\t\t}\n\t\t}\n\t}\n"
	}
	g := loadGateway(t, "http://localhost:9080 {\n"+
		route("/ok", ok.addr, "")+
		route("/flaky", flaky.addr, "retry {\n backoff 1ms 1ms\n }")+
		route("/trip", tripping.addr, "retry off\n breaker {\n consecutive_failures 2\n open_for 300ms\n half_open_requests 1\n }")+
		"}\n")

	for i := 0; i < 3; i++ {
		g.get("/ok")
	}
	g.get("/flaky")                                      // 503, then ok
	post(t, g, "/flaky", "order")                        // 503, not retried: unsafe
	g.get("/trip")                                       // 500
	g.get("/trip")                                       // 500: the breaker opens
	if res, _ := g.get("/trip"); res.StatusCode != 503 { // refused
		t.Fatalf("the breaker did not open: %d", res.StatusCode)
	}
	s := metricsScrape(t)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"caddy_resilient_requests_total", map[string]string{"upstream": ok.addr, "outcome": "ok"}, 3},
		{"caddy_resilient_attempts_total", map[string]string{"upstream": ok.addr, "outcome": "ok"}, 3},
		{"caddy_resilient_requests_total", map[string]string{"upstream": flaky.addr, "outcome": "ok"}, 1},
		{"caddy_resilient_requests_total", map[string]string{"upstream": flaky.addr, "outcome": "upstream_status"}, 1},
		{"caddy_resilient_attempts_total", map[string]string{"upstream": flaky.addr, "outcome": "upstream_status"}, 2},
		{"caddy_resilient_retries_total", map[string]string{"upstream": flaky.addr, "reason": "503"}, 1},
		{"caddy_resilient_retries_denied_total", map[string]string{"upstream": flaky.addr, "reason": "unsafe"}, 1},
		// series are created when first used: none for what never happened
		{"caddy_resilient_retries_denied_total", map[string]string{"upstream": flaky.addr, "reason": "budget"}, -1},
		{"caddy_resilient_requests_total", map[string]string{"upstream": tripping.addr, "outcome": "upstream_status"}, 2},
		{"caddy_resilient_requests_total", map[string]string{"upstream": tripping.addr, "outcome": "breaker_open"}, 1},
		{"caddy_resilient_attempts_total", map[string]string{"upstream": tripping.addr, "outcome": "breaker_open"}, -1},
		{"caddy_resilient_breaker_state", map[string]string{"upstream": tripping.addr}, 2},
		// every upstream has a breaker_state from its first request on
		{"caddy_resilient_breaker_state", map[string]string{"upstream": ok.addr}, 0},
		{"caddy_resilient_breaker_state", map[string]string{"upstream": flaky.addr}, 0},
		{"caddy_resilient_pool_wait_seconds_count", map[string]string{"upstream": ok.addr}, -1},
		{"caddy_resilient_breaker_transitions_total", map[string]string{"upstream": tripping.addr, "to": "open"}, 1},
		{"caddy_resilient_pool_in_flight", map[string]string{"upstream": ok.addr}, 0},
		{"caddy_resilient_request_duration_seconds_count", map[string]string{"upstream": ok.addr, "outcome": "ok"}, 3},
	} {
		if got := metricsValue(s, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	series := 0
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "caddy_resilient_") && strings.Contains(line, `upstream="`+ok.addr+`"`) {
			series++
		}
	}
	if series == 0 || series > 40 {
		t.Errorf("an upstream that only answered ok has %d series, want at most 40", series)
	}

	// recovery: half-open after open_for, one good probe closes it
	healthy.Store(true)
	time.Sleep(350 * time.Millisecond)
	if res, _ := g.get("/trip"); res.StatusCode != 200 {
		t.Fatalf("the probe after open_for got %d", res.StatusCode)
	}
	s = metricsScrape(t)
	for to, want := range map[string]float64{"open": 1, "half_open": 1, "closed": 1} {
		if got := metricsValue(s, "caddy_resilient_breaker_transitions_total", map[string]string{"upstream": tripping.addr, "to": to}); got != want {
			t.Errorf("transitions to %s = %v, want %v", to, got, want)
		}
	}
	if got := metricsValue(s, "caddy_resilient_breaker_state", map[string]string{"upstream": tripping.addr}); got != 0 {
		t.Errorf("breaker_state after recovery = %v, want 0", got)
	}
}

// An alert on breaker_state agrees with the admin API at every scrape:
// for an upstream forced open before its first request, and for a
// breaker whose open_for ran out with no traffic since.
func TestMetricsBreakerStateAgreesWithTheAdminAPI(t *testing.T) {
	forced := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	tripping := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	})
	route := func(path, up, transport string) string {
		return "\thandle " + path + " {\n\t\treverse_proxy " + up + " {\n\t\t\ttransport resilient {\n" + transport + "\n\t\t\t}\n\t\t}\n\t}\n"
	}
	g := loadGateway(t, "http://localhost:9080 {\n"+
		route("/forced", forced.addr, "")+
		route("/trip", tripping.addr, "retry off\n breaker {\n consecutive_failures 1\n open_for 1s\n }")+
		"\thandle_errors {\n\t\theader X-Outcome {http.resilient.outcome}\n\t\trespond 503\n\t}\n"+
		"}\n")
	t.Cleanup(func() {
		adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+forced.addr, nil)
		adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+tripping.addr, nil)
	})
	agree := func(addr string, want float64, when string) {
		t.Helper()
		s := metricsScrape(t)
		got := metricsValue(s, "caddy_resilient_breaker_state", map[string]string{"upstream": addr})
		admin := map[string]float64{"closed": 0, "half_open": 1, "open": 2}[adminBreakerOf(t, addr).State]
		if got != want || admin != want {
			t.Errorf("%s: breaker_state %v, admin API %v, want both %v", when, got, admin, want)
		}
	}

	// a provider's breaker opened ahead of a known outage
	if status := adminCall(t, http.MethodPost, "/resilient/breakers/force_open?upstream="+forced.addr+"&for=1m", nil); status != http.StatusOK {
		t.Fatalf("force_open: %d", status)
	}
	agree(forced.addr, 2, "forced open, before any request")
	opened := metricsValue(metricsScrape(t), "caddy_resilient_breaker_transitions_total", map[string]string{"upstream": forced.addr, "to": "open"})
	if opened != 1 {
		t.Errorf("transitions{to=open} after force_open = %v, want 1", opened)
	}
	res, _ := g.get("/forced")
	expect(t, res, http.StatusServiceUnavailable, "breaker_open")
	agree(forced.addr, 2, "forced open, after its first request")

	// a breaker that tripped and then saw no traffic
	g.get("/trip")
	agree(tripping.addr, 2, "tripped")
	// open_for is 1s, so that the two reads above fall in it on a busy
	// machine; nothing is sent meanwhile
	time.Sleep(1500 * time.Millisecond)
	agree(tripping.addr, 1, "after open_for, with no traffic")
	var entries int
	data, _ := os.ReadFile(g.logPath)
	for _, line := range strings.Split(string(data), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && e["msg"] == "breaker state changed" &&
			e["to"] == "half_open" && e["upstream"] == tripping.addr {
			entries++
		}
	}
	if entries != 1 {
		t.Errorf("%d log entries for open -> half_open, want 1", entries)
	}
	if n := tripping.count.Load(); n != 1 {
		t.Errorf("the tripping upstream got %d requests, want 1", n)
	}
}
