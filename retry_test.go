package resilient

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func provisionedRetry(t *testing.T, r *Retry) *Retry {
	t.Helper()
	if err := r.provision(); err != nil {
		t.Fatal(err)
	}
	if err := r.validate(); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestBackoffGrowsWithJitterUpToTheLongestWait(t *testing.T) {
	r := provisionedRetry(t, &Retry{Backoff: &Backoff{First: caddy.Duration(100 * time.Millisecond), Max: caddy.Duration(time.Second)}})
	for run := 0; run < 50; run++ {
		bo := r.newBackoff()
		base := 100 * time.Millisecond
		for i := 0; i < 8; i++ {
			w := bo.NextBackOff()
			lo, hi := base/2, base+base/2
			if w < lo || w > hi {
				t.Fatalf("wait %d = %v, want within [%v, %v]", i, w, lo, hi)
			}
			base = min(base*2, time.Second)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"3", 3 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"Fri, 27 Nov 2026 12:00:05 GMT", 5 * time.Second, true},
		{"Friday, 27-Nov-26 12:00:10 GMT", 10 * time.Second, true}, // RFC 850, still valid
		{"Fri, 27 Nov 2026 11:59:00 GMT", 0, true},                 // in the past: now
		{"", 0, false},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		// all digits, too large for an integer: a very long ask, not junk
		{"99999999999999999999", maxRetryAfter, true},
		{"9223372036854775807", maxRetryAfter, true},
		{strings.Repeat("9", 10<<10), maxRetryAfter, true},
	} {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		retry  Retry
		method string
		header string
		want   idemKind
	}{
		{"GET by method", Retry{}, "GET", "", idemMethod},
		{"DELETE by method", Retry{}, "DELETE", "", idemMethod},
		{"POST unsafe", Retry{}, "POST", "", idemNo},
		{"POST with key", Retry{}, "POST", "k1", idemKey},
		{"POST key header off", Retry{IdempotencyHeader: "off"}, "POST", "k1", idemNo},
		{"PATCH generated", Retry{GenerateIdempotencyKey: true}, "PATCH", "", idemGenerated},
		{"POST with key not replaced", Retry{GenerateIdempotencyKey: true}, "POST", "k1", idemKey},
		{"generated needs retries", Retry{GenerateIdempotencyKey: true, Disabled: true}, "POST", "", idemNo},
		{"custom methods", Retry{Methods: []string{"get"}}, "PUT", "", idemNo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := provisionedRetry(t, &tc.retry)
			req := httptest.NewRequest(tc.method, "http://x/", nil)
			if tc.header != "" {
				req.Header.Set("Idempotency-Key", tc.header)
			}
			got, h := r.classify(req)
			if got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			key := h.Get("Idempotency-Key")
			switch {
			case got == idemGenerated && (len(key) != 32 || req.Header.Get("Idempotency-Key") != ""):
				t.Errorf("generated key %q must be 32 hex chars, on a copy of the headers", key)
			case tc.header != "" && key != tc.header:
				t.Errorf("the client's key became %q", key)
			}
		})
	}
	a, b := newIdempotencyKey(), newIdempotencyKey()
	if a == b {
		t.Error("two generated keys are equal")
	}
}

func TestStatusMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		status  int
		want    bool
	}{{"503", 503, true}, {"503", 502, false}, {"5xx", 599, true}, {"5xx", 499, false}, {"4xx", 429, true}} {
		m, err := parseStatusMatch(tc.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if m.match(tc.status) != tc.want {
			t.Errorf("%s matches %d: %v, want %v", tc.pattern, tc.status, !tc.want, tc.want)
		}
	}
	for _, bad := range []string{"600", "99", "6xx", "5XX", "abc", ""} {
		if _, err := parseStatusMatch(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// retryExchange is an exchange as far as retryWait needs one.
func retryExchange(t *testing.T, r *Retry, idem idemKind, tries int, total time.Time) *exchange {
	tr := &Transport{Retry: provisionedRetry(t, r)}
	ex := &exchange{t: tr, up: &upstream{budget: newBudget(tr.Retry.Budget)}, idem: idem, totalAt: total}
	ex.tries = make([]try, tries)
	return ex
}

func TestRetryWaitDecisions(t *testing.T) {
	now := time.Unix(2_000_000, 0)
	res503 := func(retryAfter string) *http.Response {
		res := &http.Response{StatusCode: 503, Header: http.Header{}}
		if retryAfter != "" {
			res.Header.Set("Retry-After", retryAfter)
		}
		return res
	}
	status := &attemptResult{outcome: OutcomeUpstreamStatus, status: 503}
	for _, tc := range []struct {
		name    string
		retry   Retry
		idem    idemKind
		tries   int
		total   time.Duration // 0: none
		res     *http.Response
		at      *attemptResult
		wantOK  bool
		deny    denial
		minWait time.Duration
	}{
		{name: "GET 503 retried", idem: idemMethod, tries: 1, res: res503(""), at: status, wantOK: true},
		{name: "out of attempts", idem: idemMethod, tries: 3, res: res503(""), at: status},
		{name: "404 not in on", idem: idemMethod, tries: 1, res: &http.Response{StatusCode: 404}, at: &attemptResult{outcome: OutcomeOK, status: 404}},
		{name: "POST 503 unsafe", idem: idemNo, tries: 1, res: res503(""), at: status, deny: denyUnsafe},
		{name: "POST refused never sent", idem: idemNo, tries: 1, at: &attemptResult{outcome: OutcomeConnectError, neverSent: true}, wantOK: true},
		{name: "POST reset after write", idem: idemNo, tries: 1, at: &attemptResult{outcome: OutcomeReset}, deny: denyUnsafe},
		{name: "timeout needs on timeout", idem: idemMethod, tries: 1, at: &attemptResult{outcome: OutcomeReadTimeout}},
		{name: "timeout with on timeout", retry: Retry{On: []string{"timeout"}}, idem: idemMethod, tries: 1, at: &attemptResult{outcome: OutcomeReadTimeout}, wantOK: true},
		{name: "total timeout never", retry: Retry{On: []string{"timeout"}}, idem: idemMethod, tries: 1, at: &attemptResult{outcome: OutcomeTotalTimeout}},
		{name: "canceled never", idem: idemMethod, tries: 1, at: &attemptResult{outcome: OutcomeCanceled, neverSent: true}},
		{name: "Retry-After honoured", idem: idemMethod, tries: 1, res: res503("2"), at: status, wantOK: true, minWait: 2 * time.Second},
		{name: "Retry-After over cap", idem: idemMethod, tries: 1, res: res503("11"), at: status, deny: denyRetryAfter},
		{name: "Retry-After at int64 max", idem: idemMethod, tries: 1, res: res503("9223372036854775807"), at: status, deny: denyRetryAfter},
		{name: "Retry-After past int64", idem: idemMethod, tries: 1, res: res503("99999999999999999999"), at: status, deny: denyRetryAfter},
		{name: "Retry-After of 10KB digits", idem: idemMethod, tries: 1, res: res503(strings.Repeat("9", 10<<10)), at: status, deny: denyRetryAfter},
		{name: "Retry-After junk is backoff", idem: idemMethod, tries: 1, res: res503("soon"), at: status, wantOK: true},
		{name: "headers over the limit", idem: idemMethod, tries: 1, at: &attemptResult{outcome: OutcomeReset, noRetry: true}},
		{name: "Retry-After ignored when off", retry: Retry{RetryAfter: -1}, idem: idemMethod, tries: 1, res: res503("60"), at: status, wantOK: true},
		{name: "wait overruns total", idem: idemMethod, tries: 1, total: time.Second, res: res503("2"), at: status, deny: denyDeadline},
		{name: "fits in total", idem: idemMethod, tries: 1, total: 3 * time.Second, res: res503("2"), at: status, wantOK: true, minWait: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var totalAt time.Time
			if tc.total > 0 {
				totalAt = now.Add(tc.total)
			}
			ex := retryExchange(t, &tc.retry, tc.idem, tc.tries, totalAt)
			wait, deny, ok := ex.retryWait(tc.res, tc.at, now)
			if ok != tc.wantOK || deny != tc.deny {
				t.Fatalf("retry %v (denied %q), want %v (denied %q)", ok, deny, tc.wantOK, tc.deny)
			}
			if ok && wait < tc.minWait {
				t.Errorf("wait %v, want at least %v", wait, tc.minWait)
			}
		})
	}
}

func TestRetryWaitRefusesUnreplayableBody(t *testing.T) {
	ex := retryExchange(t, &Retry{}, idemKey, 1, time.Time{})
	ex.body = newBodySource(io.NopCloser(strings.NewReader("0123456789")), -1, 4, nil)
	if _, err := io.ReadAll(ex.body.reader(nil)); err != nil {
		t.Fatal(err)
	}
	_, deny, ok := ex.retryWait(nil, &attemptResult{outcome: OutcomeReset}, time.Now())
	if ok || deny != denyBody {
		t.Fatalf("retried %v denied %q; a body that was not kept cannot be sent again", ok, deny)
	}
}

func TestRetryWaitPacedByRetryAfterPassesTheBudget(t *testing.T) {
	zero, none := 0.0, 0
	ex := retryExchange(t, &Retry{Budget: &Budget{Ratio: &zero, MinPerSecond: &none}}, idemMethod, 1, time.Time{})
	now := time.Unix(2_000_000, 0)
	at := &attemptResult{outcome: OutcomeUpstreamStatus, status: 429}
	plain := &http.Response{StatusCode: 429, Header: http.Header{}}
	if _, deny, ok := ex.retryWait(plain, at, now); ok || deny != denyBudget {
		t.Fatalf("a backoff retry with no budget: retried %v denied %q, want denied budget", ok, deny)
	}
	paced := &http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"1"}}}
	wait, deny, ok := ex.retryWait(paced, at, now)
	if !ok || wait != time.Second {
		t.Fatalf("a retry paced by Retry-After: retried %v after %v (denied %q), want after 1s", ok, wait, deny)
	}
}
