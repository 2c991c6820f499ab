package resilient

import (
	"net/http"
	"testing"
	"time"
)

func TestOverrideGivenBeforeTrafficAppliesToTheFirstBreaker(t *testing.T) {
	const addr = "override-before.test:443"
	t.Cleanup(func() { clearOverride(addr) })
	rec, apiErr := adminCall(t, http.MethodPost, "/resilient/breakers/force_open?upstream="+addr+"&for=1m")
	got := adminStatuses(t, rec, apiErr, addr)
	if len(got) != 1 || got[0].Seen || got[0].State != "open" || got[0].Override == nil || got[0].Settings != nil {
		t.Fatalf("force_open on an upstream not seen yet: %+v", got)
	}
	rec, apiErr = adminCall(t, http.MethodGet, "/resilient/breakers")
	if got := adminStatuses(t, rec, apiErr, addr); len(got) != 1 || got[0].Seen || got[0].State != "open" {
		t.Fatalf("GET does not show the pending override: %+v", got)
	}

	b := breakerAcquire(breakerConfig(t, nil), addr) // the first request comes
	t.Cleanup(b.drop)
	if _, wait, ok := b.allow(nil); ok || wait < 59*time.Second {
		t.Fatalf("the first breaker of a forced-open upstream let a request through (wait %v)", wait)
	}
	rec, apiErr = adminCall(t, http.MethodGet, "/resilient/breakers")
	got = adminStatuses(t, rec, apiErr, addr)
	if len(got) != 1 || !got[0].Seen || got[0].State != "open" || got[0].Override == nil {
		t.Fatalf("GET once the breaker exists: %+v", got)
	}
}

func TestOverrideOutlivesItsBreakers(t *testing.T) {
	const addr = "override-outlives.test:443"
	t.Cleanup(func() { clearOverride(addr) })
	cfg := breakerConfig(t, nil)
	b := breakerAcquire(cfg, addr)
	if _, ok := setOverride(addr, forceOpen, time.Minute); !ok {
		t.Fatal("override refused")
	}
	b.drop() // a reload dropped the config, and the breaker with it
	breakerWaitGone(t, b, time.Second)
	again := breakerAcquire(cfg, addr)
	t.Cleanup(again.drop)
	if again.state() != "open" {
		t.Fatalf("after its breaker was dropped the override is gone: %s", again.state())
	}
}

func TestOverrideResetOfAPendingOverride(t *testing.T) {
	const addr = "override-reset.test:443"
	if _, ok := setOverride(addr, forceClosed, 0); !ok {
		t.Fatal("override refused")
	}
	rec, apiErr := adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+addr)
	if apiErr != nil {
		t.Fatalf("reset: %v", apiErr.Err)
	}
	if rec.Code != http.StatusOK {
		t.Fatalf("reset: status %d", rec.Code)
	}
	for _, c := range pendingOverrides(time.Now()) {
		if c.addr == addr {
			t.Fatal("reset left the override")
		}
	}
	if _, apiErr := adminCall(t, http.MethodPost, "/resilient/breakers/reset?upstream="+addr); apiErr == nil || apiErr.HTTPStatus != http.StatusNotFound {
		t.Fatalf("a second reset: %+v, want 404: nothing is left", apiErr)
	}
}

func TestOverrideThatRunsOutIsDropped(t *testing.T) {
	const addr = "override-runs-out.test:443"
	if _, ok := setOverride(addr, forceOpen, 20*time.Millisecond); !ok {
		t.Fatal("override refused")
	}
	time.Sleep(30 * time.Millisecond)
	for _, c := range pendingOverrides(time.Now()) {
		if c.addr == addr {
			t.Fatal("an override that ran out is still listed")
		}
	}
	overrides.Lock()
	_, kept := overrides.m[addr]
	overrides.Unlock()
	if kept {
		t.Fatal("an override that ran out, of an upstream no breaker uses, is still held")
	}
}
