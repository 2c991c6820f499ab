package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// testServer runs a chaos handler in front of a "next" handler that answers
// 200 "upstream", and records what the server side saw.
type testServer struct {
	*httptest.Server
	nextCalls atomic.Int32  // requests that reached next
	bodyRead  atomic.Int64  // request body bytes read on the server
	done      chan struct{} // one value each time the chaos handler returns
}

func newTestServer(t *testing.T, h *Handler) *testServer {
	t.Helper()
	ts := &testServer{done: make(chan struct{}, 1000)}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	h.logger = zap.NewNop() // the test context's development logger is noisy
	if err := h.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		ts.nextCalls.Add(1)
		_, err := io.WriteString(w, "upstream")
		return err
	})
	ts.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Runs also when the handler aborts with a panic.
		defer func() { ts.done <- struct{}{} }()
		r.Body = countingBody{r.Body, &ts.bodyRead}
		if err := h.ServeHTTP(w, r, next); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	return ts
}

// start runs the server over plain HTTP/1.1.
func (ts *testServer) start(t *testing.T) *testServer {
	ts.Start()
	t.Cleanup(ts.Close)
	return ts
}

// waitDone fails the test unless the chaos handler returns soon.
func (ts *testServer) waitDone(t *testing.T) {
	t.Helper()
	select {
	case <-ts.done:
	case <-time.After(2 * time.Second):
		t.Fatal("chaos handler did not return")
	}
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// get sends a GET with the given X-Chaos-Key (none when key is "-") and
// returns the status, the Chaos-Fault header and the body.
func get(t *testing.T, ts *testServer, key string) (int, string, string) {
	t.Helper()
	resp, body := getResp(t, ts, key)
	return resp.StatusCode, resp.Header.Get(faultHeader), body
}

// getResp sends a GET as get does and returns the response with its body
// read.
func getResp(t *testing.T, ts *testServer, key string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, ts.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "-" {
		req.Header.Set("X-Chaos-Key", key)
	}
	return send(t, ts, req)
}

// send sends req and returns the response with its body read.
func send(t *testing.T, ts *testServer, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(body)
}

func TestNoFaultPassesThrough(t *testing.T) {
	ts := newTestServer(t, &Handler{}).start(t)
	code, fault, body := get(t, ts, "-")
	if code != http.StatusOK || fault != "" || body != "upstream" {
		t.Errorf("got %d %q %q, want 200 from next with no %s header", code, fault, body, faultHeader)
	}
}

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		retryAfter time.Duration
		want       string
	}{
		{0, ""},
		{2 * time.Second, "2"},
		{1500 * time.Millisecond, "2"}, // rounded up, so a client never comes back early
		{time.Millisecond, "1"},
	} {
		t.Run(tc.retryAfter.String(), func(t *testing.T) {
			ts := newTestServer(t, &Handler{Faults: []Fault{
				{Action: "status", Status: 503, RetryAfter: caddy.Duration(tc.retryAfter), Body: "busy"},
			}}).start(t)
			resp, err := ts.Client().Get(ts.URL)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 503 || string(body) != "busy" {
				t.Errorf("got %d %q, want 503 \"busy\"", resp.StatusCode, body)
			}
			if got := resp.Header.Get("Retry-After"); got != tc.want {
				t.Errorf("Retry-After = %q, want %q", got, tc.want)
			}
			_, present := resp.Header["Retry-After"]
			if present != (tc.want != "") {
				t.Errorf("Retry-After present = %v, want %v", present, tc.want != "")
			}
			if got := resp.Header.Get(faultHeader); got != "status" {
				t.Errorf("%s = %q, want status", faultHeader, got)
			}
			if n := ts.nextCalls.Load(); n != 0 {
				t.Errorf("next called %d times, want 0", n)
			}
		})
	}
}

func TestFirstPerKey(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "status", Status: 503, First: 2}}}).start(t)
	for i, step := range []struct {
		key  string
		want int
	}{
		{"a", 503}, {"a", 503}, {"a", 200}, {"a", 200},
		{"b", 503},                        // a different key starts fresh
		{"-", 503}, {"", 503}, {"-", 200}, // no header and an empty one share the empty key
		{"b", 503}, {"b", 200},
	} {
		if code, _, _ := get(t, ts, step.key); code != step.want {
			t.Errorf("request %d (key %q): status %d, want %d", i, step.key, code, step.want)
		}
	}
}

func TestKeyHeader(t *testing.T) {
	ts := newTestServer(t, &Handler{KeyHeader: "X-Tenant", Faults: []Fault{{Action: "status", Status: 503, First: 1}}}).start(t)
	// X-Chaos-Key is not the key header here: both requests share the empty key.
	if code, _, _ := get(t, ts, "a"); code != 503 {
		t.Errorf("first request: status %d, want 503", code)
	}
	if code, _, _ := get(t, ts, "b"); code != 200 {
		t.Errorf("second request: status %d, want 200", code)
	}
	req, _ := http.NewRequest(http.MethodGet, ts.URL, nil)
	req.Header.Set("X-Tenant", "t1")
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("new X-Tenant: status %d, want 503", resp.StatusCode)
	}
}

// The count is per request, not per fault: a later fault's `first` counts
// the requests an earlier fault took too.
func TestFirstCountsRequests(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{
		{Action: "status", Status: 500, First: 2},
		{Action: "delay", Delay: caddy.Duration(time.Millisecond), First: 3},
	}}).start(t)
	for i, want := range []string{"status", "status", "delay", ""} {
		if _, fault, _ := get(t, ts, "k"); fault != want {
			t.Errorf("request %d: fault %q, want %q", i+1, fault, want)
		}
	}
}

func TestFirstConcurrent(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "status", Status: 503, First: 10}}}).start(t)
	if n := concurrentStatuses(t, ts, 50, "same")[503]; n != 10 {
		t.Errorf("%d requests failed, want exactly 10", n)
	}
	if n := ts.nextCalls.Load(); n != 40 {
		t.Errorf("next called %d times, want 40", n)
	}
}

// concurrentStatuses sends n GETs at once, all with the X-Chaos-Key key (or
// none when key is "-"), and counts their statuses.
func concurrentStatuses(t *testing.T, ts *testServer, n int, key string) map[int]int {
	t.Helper()
	var mu sync.Mutex
	counts := make(map[int]int)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, ts.URL, nil)
			if key != "-" {
				req.Header.Set("X-Chaos-Key", key)
			}
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			counts[resp.StatusCode]++
		})
	}
	wg.Wait()
	return counts
}

func TestKeyCountsBounded(t *testing.T) {
	old := maxKeys
	maxKeys = 2
	t.Cleanup(func() { maxKeys = old })

	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "status", Status: 503, First: 1}}}).start(t)
	for i, step := range []struct {
		key  string
		want int
	}{
		{"a", 503}, {"a", 200}, {"b", 503},
		{"c", 503}, // a third key: the counts start over
		{"a", 503}, // so "a" is new again
		{"c", 200},
	} {
		if code, _, _ := get(t, ts, step.key); code != step.want {
			t.Errorf("request %d (key %q): status %d, want %d", i, step.key, code, step.want)
		}
	}
}

func TestProbability(t *testing.T) {
	for _, tc := range []struct {
		p          float64
		wantFaults func(n, of int) bool
	}{
		{0, func(n, of int) bool { return n == 0 }},
		{1, func(n, of int) bool { return n == of }},
		// Failing this by chance has odds of about 2^-300.
		{0.5, func(n, of int) bool { return n > 0 && n < of }},
	} {
		ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "status", Status: 503, Probability: prob(tc.p)}}}).start(t)
		const requests = 300
		faults := 0
		for range requests {
			if code, _, _ := get(t, ts, "-"); code == 503 {
				faults++
			}
		}
		if !tc.wantFaults(faults, requests) {
			t.Errorf("probability %v: %d of %d requests faulted", tc.p, faults, requests)
		}
		if int(ts.nextCalls.Load()) != requests-faults {
			t.Errorf("probability %v: next called %d times, want %d", tc.p, ts.nextCalls.Load(), requests-faults)
		}
	}
}

func TestDelay(t *testing.T) {
	const delay = 50 * time.Millisecond
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "delay", Delay: caddy.Duration(delay)}}}).start(t)
	start := time.Now()
	code, fault, body := get(t, ts, "-")
	elapsed := time.Since(start)
	if elapsed < delay || elapsed > delay+2*time.Second {
		t.Errorf("request took %v, want about %v", elapsed, delay)
	}
	if code != 200 || body != "upstream" || fault != "delay" {
		t.Errorf("got %d %q (fault %q), want 200 \"upstream\" from next, fault delay", code, body, fault)
	}
}

func TestDelayClientGone(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "delay", Delay: caddy.Duration(time.Hour)}}}).start(t)
	clientGivesUp(t, ts)
	ts.waitDone(t)
	if n := ts.nextCalls.Load(); n != 0 {
		t.Errorf("next called %d times after the client went away, want 0", n)
	}
}

func TestHangUntilClientGone(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "hang"}}}).start(t)
	clientGivesUp(t, ts)
	ts.waitDone(t)
	if n := ts.nextCalls.Load(); n != 0 {
		t.Errorf("next called %d times, want 0", n)
	}
}

// clientGivesUp sends a request that gets no answer before its 30ms deadline.
func clientGivesUp(t *testing.T, ts *testServer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL, nil)
	resp, err := ts.Client().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got an answer (%d), want none", resp.StatusCode)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client error %v, want its deadline", err)
	}
}

func TestHangCap(t *testing.T) {
	old := hangCap
	hangCap = 20 * time.Millisecond
	t.Cleanup(func() { hangCap = old })

	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "hang"}}}).start(t)
	resp, err := ts.Client().Get(ts.URL)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got an answer (%d), want the connection dropped", resp.StatusCode)
	}
	ts.waitDone(t)
}

func TestReset(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "reset"}}}).start(t)
	body := bytes.Repeat([]byte("b"), 256<<10)
	resp, err := ts.Client().Post(ts.URL, "application/octet-stream", bytes.NewReader(body))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got an answer (%d), want a reset", resp.StatusCode)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client error %v, want a connection reset", err)
	}
	ts.waitDone(t)
	if n := ts.bodyRead.Load(); n != int64(len(body)) {
		t.Errorf("server read %d body bytes, want all %d", n, len(body))
	}
	if n := ts.nextCalls.Load(); n != 0 {
		t.Errorf("next called %d times, want 0", n)
	}
}

// Over HTTP/2 the connection cannot be hijacked; the stream is reset instead.
func TestResetHTTP2(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "reset"}}})
	ts.EnableHTTP2 = true
	ts.StartTLS()
	t.Cleanup(ts.Close)

	resp, err := ts.Client().Post(ts.URL, "text/plain", strings.NewReader("payload"))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got an answer (%d %s), want a stream error", resp.StatusCode, resp.Proto)
	}
	ts.waitDone(t)
	if n := ts.bodyRead.Load(); n != int64(len("payload")) {
		t.Errorf("server read %d body bytes, want %d", n, len("payload"))
	}
}

func TestTruncate(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{{Action: "truncate"}}}).start(t)
	resp, err := ts.Client().Get(ts.URL)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != truncateLength || resp.Header.Get(faultHeader) != "truncate" {
		t.Errorf("got %d, Content-Length %d, fault %q; want 200, %d, truncate",
			resp.StatusCode, resp.ContentLength, resp.Header.Get(faultHeader), truncateLength)
	}
	body, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading body: %v, want unexpected EOF", err)
	}
	if len(body) != truncateLength/2 {
		t.Errorf("read %d bytes, want %d", len(body), truncateLength/2)
	}
	if n := ts.nextCalls.Load(); n != 0 {
		t.Errorf("next called %d times, want 0", n)
	}
}

func TestFirstTriggeringFaultActs(t *testing.T) {
	ts := newTestServer(t, &Handler{Faults: []Fault{
		{Action: "reset", Probability: prob(0)},
		{Action: "status", Status: 502},
		{Action: "status", Status: 504},
	}}).start(t)
	if code, _, _ := get(t, ts, "-"); code != 502 {
		t.Errorf("status %d, want 502 from the first fault that triggers", code)
	}
}

// fakeClock stands in for the quotas' clock; it moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// useFakeClock installs a fake clock for the test; call it before the
// handler is provisioned, which is when a quota's windows start.
func useFakeClock(t *testing.T) *fakeClock {
	c := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	old := now
	now = c.now
	t.Cleanup(func() { now = old })
	return c
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func quotaFault(limit int, window time.Duration) Fault {
	return Fault{Action: "quota", Limit: limit, Window: caddy.Duration(window)}
}

// getQuota sends a GET as get does and returns the status and Retry-After.
func getQuota(t *testing.T, ts *testServer, key string) (int, string) {
	t.Helper()
	resp, _ := getResp(t, ts, key)
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// getStats asks the handler for its quota counts.
func getStats(t *testing.T, ts *testServer) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, ts.URL, nil)
	req.Header.Set("X-Chaos-Stats", "1")
	resp, body := send(t, ts, req)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("stats: %d %s, want 200 application/json", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return strings.TrimSpace(body)
}

// Ten requests in each of four windows, one every 100ms: exactly the first
// three of each window pass, so at most three ever pass in one window.
func TestQuotaFixedWindow(t *testing.T) {
	clock := useFakeClock(t)
	ts := newTestServer(t, &Handler{Faults: []Fault{quotaFault(3, time.Second)}}).start(t)
	for win := range 4 {
		passed := 0
		for step := range 10 {
			code, retryAfter := getQuota(t, ts, "-")
			switch {
			case code == 200:
				passed++
				if step >= 3 {
					t.Errorf("window %d, request %d passed, want only the first 3 to", win, step+1)
				}
			case code != 429:
				t.Errorf("window %d, request %d: status %d, want 200 or 429", win, step+1, code)
			case retryAfter != "1":
				t.Errorf("window %d, request %d: Retry-After %q, want 1", win, step+1, retryAfter)
			}
			clock.advance(100 * time.Millisecond)
		}
		if passed != 3 {
			t.Errorf("window %d: %d requests passed, want 3", win, passed)
		}
	}
	if n := ts.nextCalls.Load(); n != 12 {
		t.Errorf("next called %d times, want 12", n)
	}
	if got, want := getStats(t, ts), `{"quota_passed":12,"quota_refused":28}`; got != want {
		t.Errorf("stats %s, want %s", got, want)
	}
}

// Without retry_after, Retry-After is the time left in the window, rounded up.
func TestQuotaRetryAfterWindowEnd(t *testing.T) {
	clock := useFakeClock(t)
	ts := newTestServer(t, &Handler{Faults: []Fault{quotaFault(1, time.Minute)}}).start(t)
	if code, _ := getQuota(t, ts, "-"); code != 200 {
		t.Fatalf("first request: status %d, want 200", code)
	}
	var at time.Duration // into the first window
	for _, step := range []struct {
		advance time.Duration // from the previous step
		want    string
	}{
		{0, "60"},
		{250 * time.Millisecond, "60"}, // 59.75s left, rounded up
		{20 * time.Second, "40"},
		{39 * time.Second, "1"},
		{700 * time.Millisecond, "1"}, // 0.05s left
	} {
		clock.advance(step.advance)
		at += step.advance
		code, retryAfter := getQuota(t, ts, "-")
		if code != 429 || retryAfter != step.want {
			t.Errorf("at %v: %d Retry-After %q, want 429 %q", at, code, retryAfter, step.want)
		}
	}
	clock.advance(50 * time.Millisecond) // the next window
	if code, _ := getQuota(t, ts, "-"); code != 200 {
		t.Errorf("in the next window: status %d, want 200", code)
	}
}

func TestQuotaRefusal(t *testing.T) {
	useFakeClock(t)
	f := quotaFault(1, time.Hour)
	f.RetryAfter = caddy.Duration(2500 * time.Millisecond)
	f.Body = "slow down"
	ts := newTestServer(t, &Handler{Faults: []Fault{f}}).start(t)
	if code, _ := getQuota(t, ts, "-"); code != 200 {
		t.Fatalf("first request: status %d, want 200", code)
	}
	resp, body := getResp(t, ts, "-")
	if resp.StatusCode != 429 || body != "slow down" {
		t.Errorf("got %d %q, want 429 \"slow down\"", resp.StatusCode, body)
	}
	for name, want := range map[string]string{
		"Retry-After":  "3", // from retry_after, rounded up, not the hour left
		faultHeader:    "quota",
		"Content-Type": "text/plain; charset=utf-8",
	} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if n := ts.nextCalls.Load(); n != 1 {
		t.Errorf("next called %d times, want 1", n)
	}
}

func TestQuotaPerKey(t *testing.T) {
	useFakeClock(t)
	for _, tc := range []struct {
		perKey bool
		steps  []string // key, then the status wanted
	}{
		{false, []string{"a", "200", "b", "200", "a", "429", "c", "429", "-", "429"}},
		{true, []string{"a", "200", "a", "200", "a", "429", "b", "200", "-", "200", "", "200", "-", "429", "b", "200", "b", "429"}},
	} {
		f := quotaFault(2, time.Second)
		f.PerKey = tc.perKey
		ts := newTestServer(t, &Handler{Faults: []Fault{f}}).start(t)
		for i := 0; i < len(tc.steps); i += 2 {
			key, want := tc.steps[i], tc.steps[i+1]
			if code, _ := getQuota(t, ts, key); strconv.Itoa(code) != want {
				t.Errorf("per_key %v, request %d (key %q): status %d, want %s", tc.perKey, i/2+1, key, code, want)
			}
		}
	}
}

// Past maxKeys keys, a per-key quota forgets the windows that are over
// first, and starts over only when every key is in the current window.
func TestQuotaKeysBounded(t *testing.T) {
	old := maxKeys
	maxKeys = 2
	t.Cleanup(func() { maxKeys = old })
	clock := useFakeClock(t)

	f := quotaFault(1, time.Second)
	f.PerKey = true
	ts := newTestServer(t, &Handler{Faults: []Fault{f}}).start(t)
	for i, step := range []struct {
		advance time.Duration
		key     string
		want    int
	}{
		{0, "a", 200},
		{time.Second, "b", 200}, // a's count is of a past window now
		{0, "c", 200},           // a third key: a's count goes, b's stays
		{0, "b", 429},
		{0, "d", 200}, // b and c are both in this window: the counts start over
		{0, "b", 200},
	} {
		clock.advance(step.advance)
		if code, _ := getQuota(t, ts, step.key); code != step.want {
			t.Errorf("request %d (key %q): status %d, want %d", i+1, step.key, code, step.want)
		}
	}
}

func TestQuotaConcurrent(t *testing.T) {
	useFakeClock(t) // stands still, so all requests share one window
	ts := newTestServer(t, &Handler{Faults: []Fault{quotaFault(10, time.Second)}}).start(t)
	if n := concurrentStatuses(t, ts, 50, "-")[429]; n != 40 {
		t.Errorf("%d requests refused, want exactly 40", n)
	}
	if n := ts.nextCalls.Load(); n != 10 {
		t.Errorf("next called %d times, want 10", n)
	}
	if got, want := getStats(t, ts), `{"quota_passed":10,"quota_refused":40}`; got != want {
		t.Errorf("stats %s, want %s", got, want)
	}
}

// A quota is one fault among others: it acts only on requests over its
// limit, passes the others on to the faults after it, and counts only the
// requests that reach it.
func TestQuotaInOrder(t *testing.T) {
	useFakeClock(t)
	for _, tc := range []struct {
		name      string
		faults    []Fault
		want      []int // statuses of successive requests
		wantStats string
	}{
		{
			name: "between other faults",
			faults: []Fault{
				{Action: "status", Status: 500, First: 1},
				quotaFault(2, time.Second),
				{Action: "status", Status: 503, First: 2},
			},
			want:      []int{500, 503, 200, 429, 429},
			wantStats: `{"quota_passed":2,"quota_refused":2}`,
		},
		{
			// A request refused by a later quota counts as refused, not
			// also as passed.
			name:      "two quotas",
			faults:    []Fault{quotaFault(3, time.Second), quotaFault(1, time.Minute)},
			want:      []int{200, 429, 429, 429, 429},
			wantStats: `{"quota_passed":1,"quota_refused":4}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, &Handler{Faults: tc.faults}).start(t)
			for i, want := range tc.want {
				if code, _ := getQuota(t, ts, "k"); code != want {
					t.Errorf("request %d: status %d, want %d", i+1, code, want)
				}
			}
			if got := getStats(t, ts); got != tc.wantStats {
				t.Errorf("stats %s, want %s", got, tc.wantStats)
			}
		})
	}
}

// A stats request is answered by the handler and counted nowhere: not by
// the quota, not by `first`, not in the stats.
func TestQuotaStatsNotCounted(t *testing.T) {
	useFakeClock(t)
	ts := newTestServer(t, &Handler{Faults: []Fault{
		quotaFault(1, time.Second),
		{Action: "status", Status: 503, First: 1},
	}}).start(t)
	for range 3 {
		if got, want := getStats(t, ts), `{"quota_passed":0,"quota_refused":0}`; got != want {
			t.Errorf("stats %s, want %s", got, want)
		}
	}
	// 503: the quota let it through and it is the first request of its key.
	if code, _ := getQuota(t, ts, "-"); code != 503 {
		t.Errorf("first request: status %d, want 503", code)
	}
	// Only a GET with the value 1 asks for stats; these are counted.
	for _, tc := range []struct{ method, value string }{
		{http.MethodPost, "1"},
		{http.MethodGet, "yes"},
	} {
		req, _ := http.NewRequest(tc.method, ts.URL, nil)
		req.Header.Set("X-Chaos-Stats", tc.value)
		if resp, _ := send(t, ts, req); resp.StatusCode != 429 {
			t.Errorf("%s with X-Chaos-Stats %q: status %d, want 429 from the quota", tc.method, tc.value, resp.StatusCode)
		}
	}
	if got, want := getStats(t, ts), `{"quota_passed":1,"quota_refused":2}`; got != want {
		t.Errorf("stats %s, want %s", got, want)
	}
	if n := ts.nextCalls.Load(); n != 0 {
		t.Errorf("next called %d times, want 0", n)
	}
}

func TestJSON(t *testing.T) {
	const input = `{"handler":"chaos","key_header":"X-Chaos-Key","faults":[
		{"action":"status","status":503,"retry_after":"2s","probability":0.1},
		{"action":"delay","delay":"2s","first":3},
		{"action":"quota","limit":100,"window":"1m","per_key":true,"retry_after":"5s","body":"slow down"},
		{"action":"hang"}, {"action":"reset","probability":0.05}, {"action":"truncate","first":1}]}`
	var got Handler
	if err := json.Unmarshal([]byte(input), &got); err != nil {
		t.Fatal(err)
	}
	want := Handler{
		KeyHeader: "X-Chaos-Key",
		Faults: []Fault{
			{Action: "status", Status: 503, RetryAfter: caddy.Duration(2 * time.Second), Probability: prob(0.1)},
			{Action: "delay", Delay: caddy.Duration(2 * time.Second), First: 3},
			{Action: "quota", Limit: 100, Window: caddy.Duration(time.Minute), PerKey: true,
				RetryAfter: caddy.Duration(5 * time.Second), Body: "slow down"},
			{Action: "hang"},
			{Action: "reset", Probability: prob(0.05)},
			{Action: "truncate", First: 1},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
}

func TestProvisionDefaults(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	var h Handler
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if h.KeyHeader != "X-Chaos-Key" {
		t.Errorf("key_header = %q, want X-Chaos-Key", h.KeyHeader)
	}
}

func TestValidate(t *testing.T) {
	second := caddy.Duration(time.Second)
	for _, tc := range []struct {
		fault Fault
		want  string
	}{
		{Fault{Action: "explode"}, `action must be one of status, delay, quota, hang, reset, truncate, got "explode"`},
		{Fault{Action: ""}, `got ""`},
		{Fault{Action: "status"}, "status code must be between 200 and 599, got 0"},
		{Fault{Action: "status", Status: 101}, "status code must be between 200 and 599, got 101"},
		{Fault{Action: "status", Status: 503, RetryAfter: -1}, "retry_after must be > 0"},
		{Fault{Action: "delay"}, "delay must be > 0, got 0s"},
		{Fault{Action: "delay", Delay: -1}, "delay must be > 0, got -1ns"},
		{Fault{Action: "hang", Status: 503}, "status only applies to the status action"},
		{Fault{Action: "reset", Delay: caddy.Duration(time.Second)}, "delay only applies to the delay action"},
		{Fault{Action: "hang", Probability: prob(2)}, "probability must be between 0 and 1, got 2"},
		{Fault{Action: "hang", First: -1}, "first must be >= 1, got -1"},
		{Fault{Action: "hang", First: 1, Probability: prob(0.5)}, "probability and first cannot be used together"},
		{Fault{Action: "quota", Window: second}, "limit must be >= 1, got 0"},
		{Fault{Action: "quota", Limit: -1, Window: second}, "limit must be >= 1, got -1"},
		{Fault{Action: "quota", Limit: 1}, "window must be 1s, 1m or 1h, got 0s"},
		{Fault{Action: "quota", Limit: 1, Window: caddy.Duration(2 * time.Second)}, "window must be 1s, 1m or 1h, got 2s"},
		{Fault{Action: "quota", Limit: 1, Window: second, Probability: prob(1)}, "probability cannot be used with the quota action, got 1"},
		{Fault{Action: "quota", Limit: 1, Window: second, First: 2}, "first cannot be used with the quota action, got 2"},
		{Fault{Action: "quota", Limit: 1, Window: second, RetryAfter: -1}, "retry_after must be > 0"},
		{Fault{Action: "quota", Limit: 1, Window: second, Status: 503}, "status only applies to the status action, got 503"},
		{Fault{Action: "hang", Limit: 3}, "limit only applies to the quota action, got 3"},
		{Fault{Action: "status", Status: 503, Window: second}, "window only applies to the quota action, got 1s"},
		{Fault{Action: "reset", PerKey: true}, "per_key only applies to the quota action"},
	} {
		h := Handler{Faults: []Fault{{Action: "hang"}, tc.fault}}
		err := h.Validate()
		if err == nil {
			t.Errorf("%+v: no error, want %q", tc.fault, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "faults[1]") {
			t.Errorf("%+v: error %q, want it to name faults[1] and contain %q", tc.fault, err, tc.want)
		}
	}
}
