package resilient

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// adminCall sends a request to the admin routes and returns the
// response, or the API error Caddy would answer with.
func adminCall(t *testing.T, method, target string) (*httptest.ResponseRecorder, *caddy.APIError) {
	t.Helper()
	req := httptest.NewRequest(method, "http://localhost:2019"+target, nil)
	rec := httptest.NewRecorder()
	mux := http.NewServeMux()
	var apiErr *caddy.APIError
	for _, rt := range (adminBreakers{}).Routes() {
		h := rt.Handler
		mux.HandleFunc(rt.Pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := h.ServeHTTP(w, r); err != nil {
				var ae caddy.APIError
				if !errors.As(err, &ae) {
					t.Fatalf("%s %s: error %v is not a caddy.APIError", method, target, err)
				}
				apiErr = &ae
			}
		})
	}
	mux.ServeHTTP(rec, req)
	return rec, apiErr
}

// adminStatuses decodes a successful answer for upstream addr.
func adminStatuses(t *testing.T, rec *httptest.ResponseRecorder, apiErr *caddy.APIError, addr string) []breakerStatus {
	t.Helper()
	if apiErr != nil {
		t.Fatalf("API error %d: %v", apiErr.HTTPStatus, apiErr.Err)
	}
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var all, out []breakerStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &all); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	for _, s := range all {
		if s.Upstream == addr {
			out = append(out, s)
		}
	}
	return out
}

// adminTwoBreakers registers two breakers for addr, with different
// settings, as two sites proxying to one upstream would.
func adminTwoBreakers(t *testing.T, addr string) (*breaker, *breaker) {
	t.Helper()
	a := breakerAcquire(breakerConfig(t, func(c *Breaker) { c.ConsecutiveFailures = breakerInt(1) }), addr)
	b := breakerAcquire(breakerConfig(t, func(c *Breaker) { c.SlowCall = caddy.Duration(time.Second) }), addr)
	t.Cleanup(func() { a.drop(); b.drop() }) // no lingering into the next test
	return a, b
}

func TestAdminListsEveryBreaker(t *testing.T) {
	a, _ := adminTwoBreakers(t, "admin-list.test:443")
	breakerSend(t, a, true)
	rec, apiErr := adminCall(t, http.MethodGet, "/resilient/breakers")
	got := adminStatuses(t, rec, apiErr, "admin-list.test:443")
	if len(got) != 2 {
		t.Fatalf("%d breakers for the upstream, want 2: %s", len(got), rec.Body)
	}
	var open, closed *breakerStatus
	for i := range got {
		switch got[i].State {
		case "open":
			open = &got[i]
		case "closed":
			closed = &got[i]
		}
	}
	if open == nil || closed == nil {
		t.Fatalf("want one open and one closed breaker: %s", rec.Body)
	}
	if open.OpenUntil == nil || time.Until(*open.OpenUntil) < 900*time.Millisecond || open.OpenPeriod != "1s" {
		t.Errorf("open_until %v, open_period %q: want the first open period, 1s from now", open.OpenUntil, open.OpenPeriod)
	}
	if closed.OpenUntil != nil || closed.OpenPeriod != "" || closed.Override != nil {
		t.Errorf("closed breaker: %+v", closed)
	}
	s := closed.Settings
	if s.Window != "10s" || s.OpenFor != "1s" || s.OpenForMax != "30s" || s.SlowCall != "1s" || s.HalfOpenRequests != 3 ||
		s.FailureRatio != 0.5 || s.MinRequests != 20 || s.ConsecutiveFailures != 5 || len(s.FailureStatus) != 4 {
		t.Errorf("settings %+v", s)
	}
	if !strings.Contains(rec.Body.String(), `"counts":{"requests":0,`) {
		t.Errorf("counts missing: %s", rec.Body)
	}
}

func TestAdminActsOnEveryBreakerOfTheUpstream(t *testing.T) {
	const addr = "admin-act.test:443"
	a, b := adminTwoBreakers(t, addr)
	breakerSend(t, a, true) // a trips, b stays closed

	rec, apiErr := adminCall(t, http.MethodPost, "/resilient/breakers/force_open?upstream="+addr+"&for=30s")
	for _, s := range adminStatuses(t, rec, apiErr, addr) {
		own := "closed"
		if s.Settings.ConsecutiveFailures == 1 {
			own = "open"
		}
		if s.State != "open" || s.Override == nil || s.Override.State != "open" || s.Override.Until == nil ||
			s.Override.BreakerState != own || time.Until(*s.Override.Until) < 29*time.Second {
			t.Errorf("after force_open: %+v %+v", s, s.Override)
		}
	}
	for _, br := range []*breaker{a, b} {
		if _, wait, ok := br.allow(nil); ok || wait < 29*time.Second {
			t.Errorf("forced open: allowed %v, wait %v", ok, wait)
		}
	}

	rec, apiErr = adminCall(t, http.MethodPost, "/resilient/breakers/force_close?upstream="+addr)
	got := adminStatuses(t, rec, apiErr, addr)
	if len(got) != 2 {
		t.Fatalf("force_close answered for %d breakers, want 2", len(got))
	}
	for _, s := range got {
		if s.State != "closed" || s.Override == nil || s.Override.State != "closed" || s.Override.Until != nil {
			t.Errorf("after force_close: %+v %+v", s, s.Override)
		}
	}
	if _, _, ok := a.allow(nil); !ok {
		t.Error("forced closed, yet the tripped breaker refused a request")
	}

	rec, apiErr = adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+addr)
	for _, s := range adminStatuses(t, rec, apiErr, addr) {
		if s.State != "closed" || s.Override != nil || s.OpenUntil != nil || s.Counts.Failures != 0 {
			t.Errorf("after reset: %+v", s)
		}
	}
	if a.state() != "closed" || b.state() != "closed" {
		t.Error("reset did not close both breakers")
	}
}

func TestAdminRejectsBadInput(t *testing.T) {
	const addr = "admin-bad.test:443"
	adminTwoBreakers(t, addr)
	for _, tc := range []struct {
		method, target string
		status         int
	}{
		{http.MethodPost, "/resilient/breakers", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/resilient/breakers", http.StatusMethodNotAllowed},
		{http.MethodGet, "/resilient/breakers/reset?upstream=" + addr, http.StatusMethodNotAllowed},
		{http.MethodPost, "/resilient/breakers/explode?upstream=" + addr, http.StatusNotFound},
		{http.MethodPost, "/resilient/breakers/", http.StatusNotFound},
		{http.MethodPost, "/resilient/breakers/reset", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/reset?upstream=", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/reset?upstream=" + addr + "&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/reset?upstream=nowhere.test:1", http.StatusNotFound},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr, http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=soon", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=-5s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=0s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=nowhere.test&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=nowhere.test:99999&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/reset?upstream=nowhere.test:1", http.StatusNotFound},
		{http.MethodPost, "/resilient/breakers/force_close?upstream=" + addr + "&for=x", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_close?for=1s", http.StatusBadRequest},
		// an override lasts from 1s to 7 days
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=1000000h", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=169h", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=999ms", http.StatusBadRequest},
		// exactly one valid host:port of at most 255 characters
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + strings.Repeat("a", 5000) + ":443&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&upstream=other.test:443&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=1s&for=2s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=bad%20host:443&for=1s", http.StatusBadRequest},
		{http.MethodPost, "/resilient/breakers/force_open?upstream=" + addr + "&for=1s&until=tomorrow", http.StatusBadRequest},
		// a malformed query is named as such, not as a missing upstream
		{http.MethodPost, "/resilient/breakers/force_open?upstream=%zz&for=1s", http.StatusBadRequest},
		// an unknown path under /resilient/ is a JSON 404 too
		{http.MethodGet, "/resilient/", http.StatusNotFound},
		{http.MethodGet, "/resilient/circuits", http.StatusNotFound},
	} {
		_, apiErr := adminCall(t, tc.method, tc.target)
		if apiErr == nil || apiErr.HTTPStatus != tc.status || apiErr.Err == nil {
			t.Errorf("%s %s: got %+v, want status %d with an error", tc.method, tc.target, apiErr, tc.status)
		}
	}
	if _, apiErr := adminCall(t, http.MethodPost, "/resilient/breakers/force_open?upstream=%zz&for=1s"); apiErr == nil ||
		!strings.Contains(apiErr.Err.Error(), "malformed query") {
		t.Errorf("upstream=%%zz: %v, want the query named as malformed", apiErr)
	}
	for _, good := range []string{"1s", "7d", "168h"} {
		rec, apiErr := adminCall(t, http.MethodPost, "/resilient/breakers/force_close?upstream=admin-bounds.test:443&for="+good)
		if apiErr != nil || rec.Code != http.StatusOK {
			t.Errorf("for=%s: %v, want it accepted", good, apiErr)
		}
		applyReset("admin-bounds.test:443")
	}
	for _, b := range lookupBreakers(addr) {
		if b.state() != "closed" || b.ov.ov.Load() != nil {
			t.Errorf("bad input changed a breaker: %s", b.state())
		}
	}
}
