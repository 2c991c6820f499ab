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
	req, err := http.NewRequest(http.MethodGet, ts.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "-" {
		req.Header.Set("X-Chaos-Key", key)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp.StatusCode, resp.Header.Get(faultHeader), string(body)
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
	var failed atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, ts.URL, nil)
			req.Header.Set("X-Chaos-Key", "same")
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode == 503 {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n != 10 {
		t.Errorf("%d requests failed, want exactly 10", n)
	}
	if n := ts.nextCalls.Load(); n != 40 {
		t.Errorf("next called %d times, want 40", n)
	}
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

func TestJSON(t *testing.T) {
	const input = `{"handler":"chaos","key_header":"X-Chaos-Key","faults":[
		{"action":"status","status":503,"retry_after":"2s","probability":0.1},
		{"action":"delay","delay":"2s","first":3},
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
	for _, tc := range []struct {
		fault Fault
		want  string
	}{
		{Fault{Action: "explode"}, `action must be one of status, delay, hang, reset, truncate, got "explode"`},
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
