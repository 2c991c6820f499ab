package resilient

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestPolicyCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		input, inner string // inner "": none (random at provision)
		err          bool
	}{
		{input: `resilient`},
		{input: `resilient round_robin`, inner: `{"policy":"round_robin"}`},
		{input: `resilient first`, inner: `{"policy":"first"}`},
		{input: `resilient weighted_round_robin 3 1`, inner: `{"policy":"weighted_round_robin","weights":[3,1]}`},
		{input: "resilient header X-Tenant {\n\tfallback first\n}", inner: `{"fallback":{"policy":"first"},"field":"X-Tenant","policy":"header"}`},
		{input: `resilient no_such_policy`, err: true},
		{input: `resilient random extra`, err: true},
	} {
		s := new(Selection)
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if tc.err {
			if err == nil {
				t.Errorf("%q: no error", tc.input)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.input, err)
			continue
		}
		got := ""
		if s.InnerRaw != nil {
			var v any
			_ = json.Unmarshal(s.InnerRaw, &v)
			b, _ := json.Marshal(v) // sorted keys
			got = string(b)
		}
		if got != tc.inner {
			t.Errorf("%q: inner %s, want %s", tc.input, got, tc.inner)
		}
	}
}

// policyProvisioned returns a provisioned policy around inner (nil: the default).
func policyProvisioned(t *testing.T, inner json.RawMessage) *Selection {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	s := &Selection{InnerRaw: inner}
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// policyRequest is a request as reverse_proxy hands it to a policy.
func policyRequest() *http.Request {
	req := httptest.NewRequest(http.MethodPost, "http://gateway.test/orders", nil)
	repl := caddy.NewReplacer()
	return req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
}

// policyBreakers registers a breaker that one failure trips for each address.
func policyBreakers(t *testing.T, addrs ...string) map[string]*breaker {
	t.Helper()
	cfg := breakerConfig(t, func(c *Breaker) {
		c.ConsecutiveFailures = breakerInt(1)
		c.OpenFor = caddy.Duration(40 * time.Millisecond)
		c.HalfOpenRequests = 1
	})
	out := make(map[string]*breaker)
	for _, a := range addrs {
		b := breakerAcquire(cfg, a)
		t.Cleanup(b.drop)
		out[a] = b
	}
	return out
}

func TestPolicySkipsUpstreamsWhoseBreakerIsOpen(t *testing.T) {
	bs := policyBreakers(t, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	pool := reverseproxy.UpstreamPool{{Dial: "10.0.0.1:80"}, {Dial: "10.0.0.2:80"}, {Dial: "10.0.0.3:80"}}
	s := policyProvisioned(t, json.RawMessage(`{"policy":"first"}`))
	pick := func() string { return s.Select(pool, policyRequest(), httptest.NewRecorder()).Dial }

	if got := pick(); got != "10.0.0.1:80" {
		t.Fatalf("all closed: picked %s, want the inner policy's own pick", got)
	}
	breakerSend(t, bs["10.0.0.1:80"], true)
	if got := pick(); got != "10.0.0.2:80" {
		t.Fatalf("first upstream open: picked %s, want 10.0.0.2:80", got)
	}
	breakerSend(t, bs["10.0.0.2:80"], true)
	breakerSend(t, bs["10.0.0.3:80"], true)
	if got := pick(); got != "10.0.0.1:80" {
		t.Fatalf("all open: picked %s, want the inner policy's pick among all", got)
	}

	breakerWaitHalfOpen(t, bs["10.0.0.1:80"])
	if got := pick(); got != "10.0.0.1:80" {
		t.Fatalf("half-open with a probe to spare: picked %s; it must stay eligible to recover", got)
	}
	probe, _, _ := bs["10.0.0.1:80"].allow(nil) // its one probe in flight
	breakerWaitHalfOpen(t, bs["10.0.0.2:80"])
	if got := pick(); got != "10.0.0.2:80" {
		t.Fatalf("half-open with its probe in flight: picked %s, want 10.0.0.2:80", got)
	}
	probe.report(false, false)
}

func TestPolicyConsultsEveryBreakerOfTheAddress(t *testing.T) {
	policyBreakers(t, "10.0.1.1:80", "10.0.1.2:80")
	other := breakerAcquire(breakerConfig(t, func(c *Breaker) {
		c.SlowCall = caddy.Duration(time.Second)
		c.ConsecutiveFailures = breakerInt(1)
	}), "10.0.1.1:80")
	t.Cleanup(other.drop)
	breakerSend(t, other, true) // one of the address's two breakers opens
	pool := reverseproxy.UpstreamPool{{Dial: "10.0.1.1:80"}, {Dial: "10.0.1.2:80"}}
	s := policyProvisioned(t, json.RawMessage(`{"policy":"first"}`))
	if got := s.Select(pool, policyRequest(), nil).Dial; got != "10.0.1.2:80" {
		t.Fatalf("picked %s: a breaker of 10.0.1.1:80 is open", got)
	}
}

func TestPolicyResolvesPlaceholdersInDialAddresses(t *testing.T) {
	bs := policyBreakers(t, "10.0.2.1:8080", "10.0.2.2:8080")
	breakerSend(t, bs["10.0.2.1:8080"], true)
	pool := reverseproxy.UpstreamPool{{Dial: "{test.first}:8080"}, {Dial: "10.0.2.2:8080"}}
	s := policyProvisioned(t, json.RawMessage(`{"policy":"first"}`))
	req := policyRequest()
	req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Set("test.first", "10.0.2.1")
	if got := s.Select(pool, req, nil).Dial; got != "10.0.2.2:8080" {
		t.Fatalf("picked %s; {test.first}:8080 is 10.0.2.1:8080, whose breaker is open", got)
	}
}

func TestPolicyDefaultsToRandom(t *testing.T) {
	bs := policyBreakers(t, "10.0.3.1:80", "10.0.3.2:80")
	breakerSend(t, bs["10.0.3.1:80"], true)
	s := policyProvisioned(t, nil)
	if _, ok := s.inner.(*reverseproxy.RandomSelection); !ok {
		t.Fatalf("inner policy %T, want random", s.inner)
	}
	pool := reverseproxy.UpstreamPool{{Dial: "10.0.3.1:80"}, {Dial: "10.0.3.2:80"}}
	for i := 0; i < 50; i++ {
		if got := s.Select(pool, policyRequest(), nil).Dial; got != "10.0.3.2:80" {
			t.Fatalf("picked %s, whose breaker is open", got)
		}
	}
}
