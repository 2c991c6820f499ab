package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// egressProblemSnippet returns the `(problem)` snippet of
// examples/egress.Caddyfile, verbatim.
func egressProblemSnippet(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile("../examples/egress.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	start := strings.Index(s, "(problem) {")
	end := strings.Index(s[start:], "\n}\n")
	if start < 0 || end < 0 {
		t.Fatal("examples/egress.Caddyfile has no (problem) snippet")
	}
	return s[start : start+end+3]
}

type problem struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Status     int    `json:"status"`
	Detail     string `json:"detail"`
	Upstream   string `json:"upstream"`
	Outcome    string `json:"outcome"`
	Executed   string `json:"executed"`
	Attempts   int    `json:"attempts"`
	RetryAfter int    `json:"retry_after"`
}

func readProblem(t *testing.T, res *http.Response, body string) problem {
	t.Helper()
	if ct := res.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json (body %q)", ct, body)
	}
	var p problem
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, body)
	}
	if p.Status != res.StatusCode || p.Type == "" || p.Title == "" || p.Detail == "" || !strings.HasSuffix(p.Type, p.Outcome) ||
		p.Executed == "" || p.Upstream == "" {
		t.Errorf("incomplete problem for status %d: %+v", res.StatusCode, p)
	}
	// the verdict headers say what the body says
	if res.Header.Get("X-Resilient-Outcome") != p.Outcome || res.Header.Get("X-Resilient-Executed") != p.Executed ||
		res.Header.Get("X-Resilient-Attempts") != strconv.Itoa(p.Attempts) {
		t.Errorf("verdict headers %q %q %q disagree with the problem %+v", res.Header.Get("X-Resilient-Outcome"),
			res.Header.Get("X-Resilient-Executed"), res.Header.Get("X-Resilient-Attempts"), p)
	}
	if ra := res.Header.Get("Retry-After"); ra != "" && ra != strconv.Itoa(p.RetryAfter) {
		t.Errorf("Retry-After %q, the problem's retry_after %d", ra, p.RetryAfter)
	}
	return p
}

func TestEgressProblemJSON(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	failing := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	silent := startSilent(t, true)
	refused := closedPort(t)

	route := func(path, up, transport string) string {
		return fmt.Sprintf(`
	handle %s {
		reverse_proxy %s {
			transport resilient {
				%s
			}
		}
	}`, path, up, transport)
	}
	sites := egressProblemSnippet(t) + "\nhttp://localhost:9080 {" +
		route("/refused", refused, "retry off") +
		route("/silent", silent.Addr().String(), "timeouts {\n read 100ms\n }\n retry off") +
		route("/failing", failing.addr, "breaker {\n consecutive_failures 1\n open_for 30s\n }\n retry off") +
		route("/slow", slow.addr, "pool {\n max_conns 1\n }\n timeouts {\n pool 50ms\n }") +
		route("/quota", failing.addr, "rate_limit {\n rate 1/m\n max_wait 0\n }\n breaker off\n retry off") +
		"\n\timport problem\n}\n"
	g := loadGateway(t, sites)

	res, body := g.get("/refused")
	if p := readProblem(t, res, body); res.StatusCode != 502 || p.Outcome != "connect_error" || p.Upstream != refused || p.Attempts != 1 || p.Executed != "no" {
		t.Errorf("connect_error: %d %+v", res.StatusCode, p)
	}

	res, body = g.get("/silent")
	if p := readProblem(t, res, body); res.StatusCode != 504 || p.Outcome != "read_timeout" || p.Executed != "maybe" {
		t.Errorf("read_timeout: %d %+v", res.StatusCode, p)
	}

	// one failure opens the breaker; the next call is refused
	res, _ = g.get("/failing")
	if res.StatusCode != 502 {
		t.Fatalf("the failing upstream's answer must pass through, got %d", res.StatusCode)
	}
	res, body = g.get("/failing")
	p := readProblem(t, res, body)
	if res.StatusCode != 503 || p.Outcome != "breaker_open" || p.Attempts != 0 {
		t.Errorf("breaker_open: %d %+v", res.StatusCode, p)
	}
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 30 {
		t.Errorf("breaker_open Retry-After %q, want 1..30 seconds", res.Header.Get("Retry-After"))
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		if res, err := g.Client.Get("http://localhost:9080/slow"); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for slow.count.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	res, body = g.get("/slow")
	p = readProblem(t, res, body)
	if res.StatusCode != 503 || p.Outcome != "pool_timeout" || res.Header.Get("Retry-After") == "" {
		t.Errorf("pool_timeout: %d %+v Retry-After %q", res.StatusCode, p, res.Header.Get("Retry-After"))
	}
	release <- struct{}{}
	<-done

	g.get("/quota") // takes the one token of the minute
	res, body = g.get("/quota")
	p = readProblem(t, res, body)
	if res.StatusCode != 429 || p.Outcome != "rate_limited" || p.Attempts != 0 {
		t.Errorf("rate_limited: %d %+v", res.StatusCode, p)
	}
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 30 || ra > 60 {
		t.Errorf("rate_limited Retry-After %q, want when the next token comes: up to 60s", res.Header.Get("Retry-After"))
	}
}
