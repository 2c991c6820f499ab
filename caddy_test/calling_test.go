package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Calling the gateway (SPEC §6, §13, §16): every answer says what the
// caller may assume of the upstream, every answer the gateway writes
// itself is one problem schema, and a keyed request that the client
// gives up on is carried to the upstream's answer.

// callingSite is a gateway site in front of up as the examples configure
// one for callers: the verdict headers on every answer, and the
// transport's own problem for every error.
func callingSite(up, transport string) string {
	return fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient {
			retry {
				backoff 1ms 2ms
			}
			%s
		}
		header_down X-Outcome {http.resilient.outcome}
		header_down X-Executed {http.resilient.executed}
		header_down X-Attempts {http.resilient.attempts}
		header_down X-Idem {http.resilient.idempotency}
		header_down X-Retry-After {http.resilient.retry_after}
		header_down X-Fallback {http.resilient.fallback}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		header X-Executed {http.resilient.executed}
		header X-Attempts {http.resilient.attempts}
		header X-Idem {http.resilient.idempotency}
		header X-Retry-After {http.resilient.retry_after}
		header X-Fallback {http.resilient.fallback}
		header Content-Type application/problem+json
		respond {http.resilient.problem} {http.error.status_code}
	}
}
`, up, transport)
}

// verdict is what a caller reads of an answer.
type verdict struct {
	status                      int
	outcome, executed, attempts string
	retryAfter, idem            string
}

func verdictOf(res *http.Response) verdict {
	return verdict{res.StatusCode, res.Header.Get("X-Outcome"), res.Header.Get("X-Executed"),
		res.Header.Get("X-Attempts"), res.Header.Get("X-Retry-After"), res.Header.Get("X-Idem")}
}

// problemOf decodes body as the gateway's one problem schema and checks
// that it agrees with the verdict headers.
func problemOf(t *testing.T, res *http.Response, body string) map[string]any {
	t.Helper()
	if ct := res.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want application/problem+json (body %q)", ct, body)
	}
	var p map[string]any
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("problem %q: %v", body, err)
	}
	for _, m := range []string{"type", "title", "status", "detail", "outcome", "executed", "attempts", "upstream"} {
		if _, ok := p[m]; !ok {
			t.Fatalf("problem %s has no %q", body, m)
		}
	}
	v := verdictOf(res)
	if p["status"] != float64(res.StatusCode) || p["outcome"] != v.outcome || p["executed"] != v.executed ||
		fmt.Sprint(p["attempts"]) != v.attempts {
		t.Fatalf("problem %s disagrees with the answer %+v", body, v)
	}
	if ra, ok := p["retry_after"]; ok != (v.retryAfter != "") || ok && fmt.Sprint(ra) != v.retryAfter {
		t.Fatalf("problem %s: retry_after disagrees with the placeholder %q", body, v.retryAfter)
	}
	if idem, ok := p["idempotency"]; ok != (v.idem != "") || ok && idem != v.idem {
		t.Fatalf("problem %s: idempotency disagrees with the placeholder %q", body, v.idem)
	}
	return p
}

func TestCallingEveryAnswerSaysWhatWasExecuted(t *testing.T) {
	var n atomic.Int64
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, "fine")
		case "/busy": // says it did nothing
			w.Header().Set("Retry-After", "60") // longer than retry_after: not retried
			w.WriteHeader(http.StatusTooManyRequests)
		case "/fail":
			w.WriteHeader(http.StatusInternalServerError)
		case "/drop": // reads the request, then hangs up
			hangUp(w)
		case "/flaky": // a reset, then an answer: acted at least once
			if n.Add(1)%2 == 1 {
				hangUp(w)
				return
			}
			io.WriteString(w, "second")
		}
	})
	g := loadGateway(t, callingSite(up.addr, "breaker off"))
	for _, tc := range []struct {
		method, path string
		want         verdict
	}{
		{"GET", "/ok", verdict{200, "ok", "yes", "1", "", ""}},
		{"GET", "/busy", verdict{429, "ok", "no", "1", "60", ""}},
		{"GET", "/fail", verdict{500, "upstream_status", "yes", "1", "", ""}},
		{"POST", "/drop", verdict{502, "reset", "maybe", "1", "", ""}},
		{"GET", "/flaky", verdict{200, "ok", "yes", "2", "", ""}},
	} {
		req, _ := http.NewRequest(tc.method, "http://localhost:9080"+tc.path, strings.NewReader("x"))
		res, body := g.do(req)
		if got := verdictOf(res); got != tc.want {
			t.Errorf("%s %s: %+v, want %+v", tc.method, tc.path, got, tc.want)
		}
		if res.StatusCode == 502 {
			p := problemOf(t, res, body)
			if !strings.Contains(p["detail"].(string), "may have acted") {
				t.Errorf("the problem of a request that may have acted does not say so: %s", body)
			}
		}
	}

	// nothing sent: no
	g = loadGateway(t, callingSite(closedPort(t), ""))
	res, body := g.get("/")
	if v := verdictOf(res); v.status != 502 || v.outcome != "connect_error" || v.executed != "no" {
		t.Fatalf("a refused connection: %+v", v)
	}
	problemOf(t, res, body)
}

func TestCallingRefusalsSayNoWithRetryAfter(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	g := loadGateway(t, callingSite(up.addr, `breaker {
				consecutive_failures 1
				open_for 30s
			}`))
	g.get("/") // opens the breaker
	res, body := g.get("/")
	v := verdictOf(res)
	if v.status != 503 || v.outcome != "breaker_open" || v.executed != "no" || v.retryAfter == "" {
		t.Fatalf("a refusal by the open breaker: %+v, want 503 breaker_open, executed no, with retry_after", v)
	}
	if p := problemOf(t, res, body); p["retry_after"] == nil {
		t.Fatalf("the breaker's refusal has no retry_after member: %s", body)
	}
}

// With the defaults (no idempotency_header off), a keyed POST reaches
// the upstream at most once: it is retried only after an answer that
// says the upstream did nothing.
func TestCallingKeyedRetriesOnlyWhatReleasesTheKey(t *testing.T) {
	for _, tc := range []struct {
		name     string
		statuses []int // the upstream's answers, in turn; 0: a reset after reading
		want     verdict
		executed int
	}{
		{"503 then 200: tried again", []int{503, 200}, verdict{200, "ok", "yes", "2", "", "new"}, 2},
		{"429 twice then 201", []int{429, 429, 201}, verdict{201, "ok", "yes", "3", "", "new"}, 3},
		{"502: never again", []int{502, 200}, verdict{502, "upstream_status", "yes", "1", "", "new"}, 1},
		{"500: never again", []int{500, 200}, verdict{500, "upstream_status", "yes", "1", "", "new"}, 1},
		{"reset after reading: never again", []int{0, 200}, verdict{502, "reset", "maybe", "1", "", "new"}, 1},
		{"503 three times: released", []int{503, 503, 503, 200}, verdict{503, "upstream_status", "no", "3", "", "released"}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
				i := int(n.Add(1)) - 1
				switch s := tc.statuses[min(i, len(tc.statuses)-1)]; s {
				case 0:
					hangUp(w)
				default:
					w.WriteHeader(s)
				}
			})
			g := loadGateway(t, callingSite(up.addr, "breaker off\nidempotency"))
			key := strings.NewReplacer(" ", "-", ":", "").Replace(tc.name)
			res, body := post(t, g, "/orders", "x", "Idempotency-Key", key)
			if got := verdictOf(res); got != tc.want {
				t.Fatalf("%+v, want %+v", got, tc.want)
			}
			if got := up.of(key); got != tc.executed {
				t.Fatalf("the upstream got the keyed POST %d times, want %d", got, tc.executed)
			}
			if tc.want.outcome == "reset" {
				problemOf(t, res, body)
			}
		})
	}
}

// The transport's own answers (400, 409, 422 and the replay of a kept
// no-answer) are the same problem schema as handle_errors', and say
// what the caller may assume.
func TestCallingTheTransportsOwnAnswersAreOneSchema(t *testing.T) {
	release := make(chan struct{})
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		switch r.URL.Path {
		case "/slow":
			<-release
		case "/drop":
			hangUp(w)
			return
		}
		io.WriteString(w, "done")
	})
	g := loadGateway(t, callingSite(up.addr, "breaker off\nidempotency {\n wait 0\n}"))
	check := func(res *http.Response, body string, want verdict) {
		t.Helper()
		if got := verdictOf(res); got != want {
			t.Fatalf("%+v, want %+v (%s)", got, want, body)
		}
		problemOf(t, res, body)
	}
	res, body := post(t, g, "/orders", "x", "Idempotency-Key", "a,b")
	check(res, body, verdict{400, "key_invalid", "no", "0", "", "invalid"})

	firstDone := sendAsync(g, "/slow", "x", "Idempotency-Key", "in-flight")
	poll(t, 2*time.Second, "the first at the upstream", func() bool { return up.of("in-flight") == 1 })
	res, body = post(t, g, "/slow", "x", "Idempotency-Key", "in-flight")
	check(res, body, verdict{409, "key_conflict", "no", "0", "1", "conflict"})
	if res.Header.Get("Retry-After") != "1" {
		t.Fatalf("a 409 while the first is in flight has Retry-After %q, want 1", res.Header.Get("Retry-After"))
	}
	close(release)
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}

	post(t, g, "/orders", "x", "Idempotency-Key", "used")
	res, body = post(t, g, "/orders", "y", "Idempotency-Key", "used")
	check(res, body, verdict{422, "key_mismatch", "no", "0", "", "mismatch"})

	res, body = post(t, g, "/drop", "x", "Idempotency-Key", "dropped")
	check(res, body, verdict{502, "reset", "maybe", "1", "", "new"})
	res, body = post(t, g, "/drop", "x", "Idempotency-Key", "dropped")
	check(res, body, verdict{502, "replayed", "maybe", "0", "", "replayed"})
	if res.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatal("the replay of a kept no-answer has no Idempotent-Replayed: true")
	}
	if got := up.of("dropped"); got != 1 {
		t.Fatalf("executed %d times, want 1", got)
	}
}

// A client answered at its deadline does not make the gateway abandon
// the upstream: the upstream's answer, when it comes, is kept, and the
// repeat gets it. Nothing executes twice.
func TestCallingTheFirstIsCarriedToTheUpstreamsAnswer(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		time.Sleep(1500 * time.Millisecond)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "label for "+body)
	})
	g := loadGateway(t, callingSite(up.addr, "deadline\nidempotency"))
	start := time.Now()
	res, body := post(t, g, "/labels", "parcel-1", "Idempotency-Key", "carried", "X-Request-Timeout", "0.3")
	if v := verdictOf(res); v.status != 504 || v.executed != "maybe" || v.idem != "new" {
		t.Fatalf("the first, at its deadline: %+v (%s)", v, body)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the first was answered after %v, its deadline was 300ms", took)
	}
	problemOf(t, res, body)
	if got := carried(t); got != 1 {
		t.Fatalf("idempotency_carried %v while the first is carried, want 1", got)
	}
	// the repeat, with no deadline of its own but the gateway's total,
	// waits for the first (wait auto) and gets its answer
	res, body = post(t, g, "/labels", "parcel-1", "Idempotency-Key", "carried")
	if v := verdictOf(res); v.status != 201 || v.outcome != "replayed" || v.executed != "yes" || body != "label for parcel-1" {
		t.Fatalf("the repeat: %+v %q, want the upstream's 201", v, body)
	}
	if got := up.of("carried"); got != 1 {
		t.Fatalf("executed %d times, want 1", got)
	}
	poll(t, 2*time.Second, "the carried gauge back to 0", func() bool { return carried(t) == 0 })
	if !strings.Contains(logText(t, g), `"carried request ended"`) {
		t.Fatal("no log entry of the carried answer's arrival")
	}
}

// An upstream that never answers is carried for complete_within only;
// then the record keeps the no-answer the first client got.
func TestCallingCarryEndsAtCompleteWithin(t *testing.T) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) { <-stop })
	g := loadGateway(t, callingSite(up.addr, "timeouts {\n total 300ms\n}\nidempotency {\n complete_within 700ms\n}"))
	res, _ := post(t, g, "/", "x", "Idempotency-Key", "never")
	if v := verdictOf(res); v.status != 504 || v.outcome != "total_timeout" || v.executed != "maybe" {
		t.Fatalf("the first: %+v", v)
	}
	poll(t, 3*time.Second, "the carry to end", func() bool { return carried(t) == 0 })
	res, body := post(t, g, "/", "x", "Idempotency-Key", "never")
	if v := verdictOf(res); v.status != 504 || v.outcome != "replayed" || v.executed != "maybe" {
		t.Fatalf("the repeat after complete_within: %+v (%s)", v, body)
	}
	if got := up.of("never"); got != 1 {
		t.Fatalf("executed %d times, want 1", got)
	}
}

// A repeat waiting for the first whose client leaves ends canceled at
// once, and is never logged as a replay.
func TestCallingAWaitingRepeatWhoseClientLeaves(t *testing.T) {
	release := make(chan struct{})
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		<-release
		io.WriteString(w, "done")
	})
	g := loadGateway(t, callingSite(up.addr, "idempotency"))
	first := sendAsync(g, "/", "x", "Idempotency-Key", "leaver")
	poll(t, 2*time.Second, "the first at the upstream", func() bool { return up.of("leaver") == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost:9080/", strings.NewReader("x"))
	req.Header.Set("Idempotency-Key", "leaver")
	done := make(chan error, 1)
	go func() {
		res, err := g.Client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	mark := len(g.entries(0))
	time.Sleep(200 * time.Millisecond) // the repeat waits for the first
	cancel()
	<-done
	poll(t, 2*time.Second, "the repeat's log entry", func() bool { return len(g.entries(0)) > mark })
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for _, e := range g.entries(0)[mark:] {
		if e.Outcome == "replayed" {
			t.Fatalf("a repeat whose client left was logged as a replay: %s", e.raw)
		}
	}
	if e := g.entries(0)[mark]; e.Outcome != "canceled" {
		t.Fatalf("the repeat whose client left: %s, want canceled", e.raw)
	}
}

// A byte-identical repeat of a request whose body the upstream never
// read, larger than the gateway hashes, gets the kept answer: never a
// false 422.
func TestCallingLargeUnreadBodyRepeatIsNoMismatch(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "accepted unread")
	})
	g := loadGateway(t, callingSite(up.addr, "idempotency"))
	// past what a fingerprint covers (8 MiB), and little enough past it
	// that the server can read the rest of a body the gateway left
	body := strings.Repeat("0123456789abcdef", (8<<20+64<<10)/16)
	// a connection each: a server that answered before reading a body
	// may close the connection under the rest of it
	res, _ := post(t, g, "/upload", body, "Idempotency-Key", "large", "Connection", "close")
	if v := verdictOf(res); v.status != 202 {
		t.Fatalf("the first: %+v", v)
	}
	res, got := post(t, g, "/upload", body, "Idempotency-Key", "large", "Connection", "close")
	if v := verdictOf(res); v.status != 202 || v.outcome != "replayed" || got != "accepted unread" {
		t.Fatalf("the byte-identical repeat: %+v %q, want the kept 202", v, got)
	}
	res, _ = post(t, g, "/upload", "small", "Idempotency-Key", "large")
	if v := verdictOf(res); v.status != 422 {
		t.Fatalf("another body with the key: %+v, want 422", v)
	}
}

// {http.resilient.idempotency} is set however the request ends, even
// before the idempotency step (a spent caller deadline).
func TestCallingIdempotencyPlaceholderIsNeverUnset(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") })
	g := loadGateway(t, callingSite(up.addr, "deadline\nidempotency"))
	res, _ := post(t, g, "/", "x", "Idempotency-Key", "spent", "X-Request-Timeout", "0")
	if v := verdictOf(res); v.status != 504 || strings.Contains(res.Header.Get("X-Idem"), "{") {
		t.Fatalf("a spent deadline: %+v, X-Idem %q", v, res.Header.Get("X-Idem"))
	}
	if ra := res.Header.Get("X-Retry-After"); strings.Contains(ra, "{") {
		t.Fatalf("retry_after left unset: %q", ra)
	}
	if _, err := strconv.Atoi(res.Header.Get("X-Attempts")); err != nil {
		t.Fatalf("attempts %q", res.Header.Get("X-Attempts"))
	}
}

// carried reads caddy_resilient_idempotency_carried.
func carried(t *testing.T) float64 {
	t.Helper()
	return metricsValue(metricsScrape(t), "caddy_resilient_idempotency_carried", nil)
}

// logText returns the transport's log so far.
func logText(t *testing.T, g *gateway) string {
	t.Helper()
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sendAsync POSTs body to path on its own goroutine; the channel gets
// the request's error, if any, once its answer was read.
func sendAsync(g *gateway, path, body string, header ...string) <-chan error {
	done := make(chan error, 1)
	go func() {
		req, err := http.NewRequest(http.MethodPost, "http://localhost:9080"+path, strings.NewReader(body))
		if err != nil {
			done <- err
			return
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := g.Client.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		done <- err
	}()
	return done
}

// An upstream that answers a keyed POST before reading its large body:
// the first client gets the whole answer (the fingerprint's drain of the
// rest of the body waits until the answer is over), and the repeat gets
// it as a replay.
func TestCallingAnswerBeforeTheBodyIsWholeAndKept(t *testing.T) {
	answer := strings.Repeat("label-", 200<<10/6)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.CopyN(io.Discard, r.Body, 100)
		w.Header().Set("Connection", "close")
		io.WriteString(w, answer)
	})
	g := loadGateway(t, callingSite(up.addr, "breaker off\nidempotency"))
	body := strings.Repeat("x", 3<<20)
	res, got := post(t, g, "/labels", body, "Idempotency-Key", "early-answer", "Connection", "close")
	if v := verdictOf(res); v.status != 200 || got != answer {
		t.Fatalf("the first: %+v, %d bytes of the %d answered", v, len(got), len(answer))
	}
	res, got = post(t, g, "/labels", body, "Idempotency-Key", "early-answer", "Connection", "close")
	if v := verdictOf(res); v.status != 200 || v.outcome != "replayed" || got != answer {
		t.Fatalf("the repeat: %+v, %d bytes, want the replay of the whole answer", v, len(got))
	}
}
