package integration

import (
	"net/http"
	"testing"
	"time"
)

// Operators see and steer every upstream from its first request (SPEC
// §7, §8).

func TestOperatorForceOpenBeforeTrafficRefusesTheFirstRequest(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	site := proxySite(up.addr, `transport resilient`)
	g := loadGateway(t, site)
	t.Cleanup(func() { adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+up.addr, nil) })

	// a known outage ahead: the upstream has carried no traffic yet
	var got []adminBreaker
	if status := adminCall(t, http.MethodPost, "/resilient/breakers/force_open?upstream="+up.addr+"&for=1m", &got); status != http.StatusOK {
		t.Fatalf("force_open before traffic: %d", status)
	}
	if len(got) != 1 || got[0].Seen || got[0].State != "open" {
		t.Fatalf("force_open answered %+v, want one upstream not seen yet, open", got)
	}
	if b := adminBreakerOf(t, up.addr); b.Seen || b.State != "open" {
		t.Fatalf("GET shows %+v", b)
	}
	breakerExpectOpen(t, g)

	// a reload keeps the operator's decision
	g = loadGateway(t, site)
	breakerExpectOpen(t, g)
	if b := adminBreakerOf(t, up.addr); !b.Seen || b.State != "open" || b.Override == nil {
		t.Fatalf("GET after a reload shows %+v", b)
	}
	if n := up.count.Load(); n != 0 {
		t.Fatalf("the upstream got %d requests while forced open", n)
	}
	if status := adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+up.addr, nil); status != http.StatusOK {
		t.Fatalf("reset: %d", status)
	}
	res, _ := g.get("/")
	expect(t, res, http.StatusOK, "ok")
}

func TestOperatorRefusalsAreLoggedOnceASecond(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {})
	g := loadGateway(t, proxySite(up.addr, `transport resilient`))
	t.Cleanup(func() { adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+up.addr, nil) })
	if status := adminCall(t, http.MethodPost, "/resilient/breakers/force_open?upstream="+up.addr+"&for=1m", nil); status != http.StatusOK {
		t.Fatalf("force_open: %d", status)
	}
	const burst = 50
	start := time.Now()
	for i := 0; i < burst; i++ {
		res, _ := g.get("/")
		expect(t, res, http.StatusServiceUnavailable, "breaker_open")
	}
	elapsed := time.Since(start)
	time.Sleep(1100 * time.Millisecond)
	res, _ := g.get("/") // a second later: logged at info again
	expect(t, res, http.StatusServiceUnavailable, "breaker_open")

	es := g.entries(burst + 1)
	if len(es) != burst+1 {
		t.Fatalf("%d log entries, want %d: every refusal has one, at debug if not at info", len(es), burst+1)
	}
	var infos []logEntry
	for _, e := range es {
		if e.Outcome != "breaker_open" {
			t.Fatalf("entry %s", e.raw)
		}
		if e.Level == "info" {
			infos = append(infos, e)
		}
	}
	if max := int(elapsed/time.Second) + 2; len(infos) > max {
		t.Fatalf("%d info entries for %d refusals in %v, want at most %d", len(infos), burst, elapsed, max)
	}
	last := infos[len(infos)-1]
	if last.raw != es[len(es)-1].raw || last.Suppressed == nil {
		t.Fatalf("the refusal a second later is not at info with suppressed: %s", es[len(es)-1].raw)
	}
	debug := len(es) - len(infos)
	var suppressed uint64
	for _, e := range infos {
		suppressed += *e.Suppressed
	}
	if suppressed != uint64(debug) {
		t.Fatalf("info entries say %d suppressed, %d went to debug", suppressed, debug)
	}
	if v := metricsValue(metricsScrape(t), "caddy_resilient_requests_total", map[string]string{"upstream": up.addr, "outcome": "breaker_open"}); v != burst+1 {
		t.Fatalf("requests_total{breaker_open} = %v, want every refusal: %d", v, burst+1)
	}
}
