package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Promises of SPEC §5, §6, §13 and §16 (and the README's "One execution
// per key", "Calling the gateway" and "Placeholders") checked against a
// real Caddy, where the gateway is most likely to break them: overflowing
// values, bodies read ahead, several upstreams, answers racing deadlines.

// SPEC §5: "An all-digit `Retry-After` too large for an integer is a very
// long ask, not junk." SPEC §6: {http.resilient.retry_after} is "whole
// seconds until a retry could succeed; set for ... an upstream answer
// carrying `Retry-After`". An upstream that asks for a pause longer than
// any duration (or for a date centuries away) must not be reported to the
// caller as "repeat in 1 second": a client following the verdict would
// hammer an upstream that asked it to stay away.
func TestPromiseRetryAfterBeyondADurationIsNotOneSecond(t *testing.T) {
	asks := map[string]string{
		"/twenty": "99999999999999999999",          // too large for an int64
		"/max":    "9223372036",                    // the most whole seconds a Duration holds
		"/date":   "Fri, 31 Dec 9999 23:59:59 GMT", // beyond what a Duration holds
	}
	up := startRaw(t, func(_ int64, c net.Conn, req *http.Request) {
		fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", asks[req.URL.Path])
	})
	g := loadGateway(t, callingSite(up.addr, "breaker off"))
	for _, path := range []string{"/twenty", "/max", "/date"} {
		res, _ := g.get(path)
		v := verdictOf(res)
		if v.status != 503 || v.executed != "no" {
			t.Fatalf("%s: %+v, want the upstream's 503, executed no", path, v)
		}
		secs, err := strconv.ParseInt(v.retryAfter, 10, 64)
		if err != nil || secs < 24*3600 {
			t.Errorf("%s: the upstream asked for Retry-After %q, the caller is told retry_after %q (want at least a day)",
				path, asks[path], v.retryAfter)
		}
	}
}

// SPEC §13: "A waiting repeat whose client leaves stops waiting at once
// (`canceled`)." It must hold whatever the size of the repeat's body: a
// body larger than retry.max_body is not read to its end before the wait,
// so Go's server never notices that the client left, and the repeat waits
// on for the first (here: until the first is let go), holding its
// connection, instead of ending canceled at once.
func TestPromiseWaitingRepeatWithALargeBodyEndsWhenItsClientLeaves(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		<-release
		io.WriteString(w, "done")
	})
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	// more than max_body (1MiB by default); what is past it fits in the
	// socket buffers, so the client sends it all before it leaves
	body := strings.Repeat("x", 1<<20+64<<10)
	first := sendAsync(g, "/", body, "Idempotency-Key", "large-leaver")
	poll(t, 2*time.Second, "the first at the upstream", func() bool { return up.of("large-leaver") == 1 })

	mark := len(g.entries(0))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost:9080/", strings.NewReader(body))
	req.Header.Set("Idempotency-Key", "large-leaver")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if res, err := g.Client.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	time.Sleep(300 * time.Millisecond) // the repeat is waiting for the first
	cancel()
	<-done

	// the first is still in flight: the repeat must have ended on its own
	deadline := time.Now().Add(2 * time.Second)
	for len(g.entries(0)) == mark && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	es := g.entries(0)
	free()
	<-first
	if len(es) == mark {
		t.Fatal("2s after its client left, the waiting repeat (body larger than max_body) still waits for the first; want it ended canceled at once")
	}
	if e := es[mark]; e.Outcome != "canceled" {
		t.Fatalf("the repeat whose client left: %s, want canceled", e.raw)
	}
}

// verdictSite is callingSite with the reverse_proxy options given
// (lb_policy, lb_retries...) and the transport block as written, no
// retry block of its own.
func verdictSite(upstreams, options, transport string) string {
	return fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		%s
		transport resilient {
			%s
		}
		header_down X-Outcome {http.resilient.outcome}
		header_down X-Executed {http.resilient.executed}
		header_down X-Attempts {http.resilient.attempts}
		header_down X-Idem {http.resilient.idempotency}
		header_down X-Retry-After {http.resilient.retry_after}
		header_down X-Upstream {http.resilient.upstream}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		header X-Executed {http.resilient.executed}
		header X-Attempts {http.resilient.attempts}
		header X-Idem {http.resilient.idempotency}
		header X-Retry-After {http.resilient.retry_after}
		header X-Upstream {http.resilient.upstream}
		header Content-Type application/problem+json
		respond {http.resilient.problem} {http.error.status_code}
	}
}
`, upstreams, options, transport)
}
