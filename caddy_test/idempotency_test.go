package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// One execution per key (SPEC §13): the gateway keeps each
// Idempotency-Key's record, so a keyed POST reaches the upstream at most
// once, whatever the client repeats.

// executions is an upstream that counts the requests it executed per
// Idempotency-Key (and Authorization), and answers as answer says.
type executions struct {
	*upstream
	mu sync.Mutex
	n  map[string]int
}

func startExecutions(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, body string)) *executions {
	e := &executions{n: map[string]int{}}
	e.upstream = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.n[r.Header.Get("Authorization")+"|"+r.Header.Get("Idempotency-Key")]++
		e.mu.Unlock()
		answer(w, r, string(body))
	})
	return e
}

// of returns how many times the upstream executed key (for auth).
func (e *executions) of(key string, auth ...string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[strings.Join(auth, "")+"|"+key]
}

// idemSite is a gateway site in front of up with an idempotency block.
func idemSite(up, idem string) string {
	return fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient {
			retry {
				idempotency_header off
				backoff 1ms 1ms
			}
			breaker off
			idempotency {
				%s
			}
		}
		header_down X-Outcome {http.resilient.outcome}
		header_down X-Idem {http.resilient.idempotency}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		header X-Idem {http.resilient.idempotency}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`, up, idem)
}

// keyed POSTs body to path with the Idempotency-Key key (none when "")
// and the other headers given as name, value pairs.
func keyed(t *testing.T, g *gateway, key, body string, header ...string) (*http.Response, string) {
	t.Helper()
	if key != "" {
		header = append(header, "Idempotency-Key", key)
	}
	return post(t, g, "/orders", body, header...)
}

// expectKeyed checks status, outcome and the idempotency placeholder.
func expectKeyed(t *testing.T, res *http.Response, status int, outcome, idem string) {
	t.Helper()
	if res.StatusCode != status || res.Header.Get("X-Outcome") != outcome || res.Header.Get("X-Idem") != idem {
		t.Fatalf("got %d outcome %q idempotency %q, want %d %q %q", res.StatusCode,
			res.Header.Get("X-Outcome"), res.Header.Get("X-Idem"), status, outcome, idem)
	}
}

// expectProblem checks that body is an RFC 9457 problem of status.
func expectProblem(t *testing.T, res *http.Response, body string, status int) {
	t.Helper()
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want application/problem+json", ct)
	}
	if err := json.Unmarshal([]byte(body), &p); err != nil || p.Status != status || p.Type == "" || p.Title == "" || p.Detail == "" {
		t.Fatalf("problem %q (%v): want type, title, detail and status %d", body, err, status)
	}
}

func TestIdempotencyRepeatGetsTheStoredAnswer(t *testing.T) {
	var n atomic.Int64
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		w.Header().Set("X-Order", strconv.FormatInt(n.Add(1), 10))
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "created "+body)
	})
	g := loadGateway(t, idemSite(up.addr, ""))

	res, body := keyed(t, g, "order-1", "sku=1")
	expectKeyed(t, res, http.StatusCreated, "ok", "new")
	res2, body2 := keyed(t, g, `"order-1"`, "sku=1") // "k" and k are one key
	expectKeyed(t, res2, http.StatusCreated, "replayed", "replayed")
	if body2 != body || res2.Header.Get("X-Order") != res.Header.Get("X-Order") || res2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay %q (X-Order %q, Idempotent-Replayed %q), want %q as first answered (X-Order %q)",
			body2, res2.Header.Get("X-Order"), res2.Header.Get("Idempotent-Replayed"), body, res.Header.Get("X-Order"))
	}
	if got := up.of("order-1"); got != 1 {
		t.Fatalf("the upstream executed order-1 %d times, want 1", got)
	}
	if e := g.lastEntry(); e.Outcome != "replayed" || e.Attempts != 0 || !strings.Contains(e.raw, `"idempotency":"replayed"`) {
		t.Errorf("log entry of the repeat: %s", e.raw)
	}

	// the same key with another body: 422, nothing sent
	res, body = keyed(t, g, "order-1", "sku=2")
	expectKeyed(t, res, http.StatusUnprocessableEntity, "key_mismatch", "mismatch")
	expectProblem(t, res, body, http.StatusUnprocessableEntity)
	// nor another path
	res, _ = post(t, g, "/elsewhere", "sku=1", "Idempotency-Key", "order-1")
	expectKeyed(t, res, http.StatusUnprocessableEntity, "key_mismatch", "mismatch")
	if got := up.of("order-1"); got != 1 {
		t.Fatalf("the upstream executed order-1 %d times, want 1", got)
	}

	// not managed: GET with a key, and POST without one
	for range 2 {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:9080/orders", nil)
		req.Header.Set("Idempotency-Key", "get-1")
		res, _ := g.do(req)
		expectKeyed(t, res, http.StatusCreated, "ok", "")
		res, _ = keyed(t, g, "", "sku=3")
		expectKeyed(t, res, http.StatusCreated, "ok", "")
	}
	if got := up.of("get-1"); got != 2 {
		t.Fatalf("GET with a key executed %d times, want 2: GET is not managed", got)
	}
}

func TestIdempotencyBadKeysAreRefused(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {})
	g := loadGateway(t, idemSite(up.addr, "require"))
	for _, tc := range []struct {
		name   string
		values []string
	}{
		{"missing with require", nil},
		{"empty", []string{""}},
		{"too long", []string{strings.Repeat("k", 256)}},
		{"a list", []string{"a, b"}},
		{"twice", []string{"a", "b"}},
		{"unclosed quote", []string{`"abc`}},
		{"not a token", []string{"a/b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/orders", strings.NewReader("x"))
			for _, v := range tc.values {
				req.Header.Add("Idempotency-Key", v)
			}
			res, body := g.do(req)
			expectKeyed(t, res, http.StatusBadRequest, "key_invalid", "invalid")
			expectProblem(t, res, body, http.StatusBadRequest)
		})
	}
	if n := up.count.Load(); n != 0 {
		t.Fatalf("the upstream got %d requests with bad keys", n)
	}
	// valid ones: a quoted list is one key, 255 characters are fine
	for _, k := range []string{`"a,b"`, strings.Repeat("k", 255), "8e03978e-40d5-43e8-bc93-6894a57f9324"} {
		res, _ := keyed(t, g, k, "x")
		expectKeyed(t, res, http.StatusOK, "ok", "new")
	}
}

func TestIdempotencyRepeatInFlightGets409(t *testing.T) {
	release := make(chan struct{})
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		<-release
		io.WriteString(w, "done")
	})
	g := loadGateway(t, idemSite(up.addr, "wait 0"))
	first := make(chan *http.Response, 1)
	go func() {
		res, _ := keyed(t, g, "slow-1", "x")
		first <- res
	}()
	poll(t, 2*time.Second, "the first request at the upstream", func() bool { return up.of("slow-1") == 1 })
	res, body := keyed(t, g, "slow-1", "x")
	expectKeyed(t, res, http.StatusConflict, "key_conflict", "conflict")
	expectProblem(t, res, body, http.StatusConflict)
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After %q, want whole seconds >= 1", res.Header.Get("Retry-After"))
	}
	close(release)
	expectKeyed(t, <-first, http.StatusOK, "ok", "new")
	if got := up.of("slow-1"); got != 1 {
		t.Fatalf("executed %d times, want 1", got)
	}
}

func TestIdempotencyTenRepeatsAtOnceExecuteOnce(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		time.Sleep(100 * time.Millisecond)
		io.WriteString(w, "charged")
	})
	g := loadGateway(t, idemSite(up.addr, "wait 2s"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[string]int{}
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, body := keyed(t, g, "once", "amount=10")
			mu.Lock()
			statuses[strconv.Itoa(res.StatusCode)+" "+res.Header.Get("X-Outcome")+" "+body]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if got := up.of("once"); got != 1 {
		t.Fatalf("10 requests with one key executed %d times, want 1", got)
	}
	// with wait, every repeat got the first one's answer
	if statuses["200 ok charged"] != 1 || statuses["200 replayed charged"] != 9 {
		t.Fatalf("answers %v, want one ok and nine replays", statuses)
	}
}

func TestIdempotencyWaitingRepeatTakesOverAReleasedKey(t *testing.T) {
	var n atomic.Int64
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		// the first request's three tries: the upstream did nothing, so
		// the gateway tries again, and then releases the key
		if n.Add(1) <= 3 {
			time.Sleep(100 * time.Millisecond)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "fourth time lucky")
	})
	g := loadGateway(t, idemSite(up.addr, "wait 2s"))
	first := make(chan *http.Response, 1)
	go func() {
		res, _ := keyed(t, g, "handover", "x")
		first <- res
	}()
	poll(t, 2*time.Second, "the first request at the upstream", func() bool { return up.of("handover") == 1 })
	res, body := keyed(t, g, "handover", "x")
	expectKeyed(t, res, http.StatusOK, "ok", "new")
	if body != "fourth time lucky" {
		t.Fatalf("the waiting repeat got %q", body)
	}
	expectKeyed(t, <-first, http.StatusServiceUnavailable, "upstream_status", "released")
	if got := up.of("handover"); got != 4 {
		t.Fatalf("executed %d times, want 4: the first one's three tries did nothing (503)", got)
	}
}

func TestIdempotencyWhatAFirstRequestLeaves(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answer  func(w http.ResponseWriter)
		status  int
		outcome string
		idem    string
		// what a repeat gets, and whether it is sent
		again, againOutcome string
		sent                bool
	}{
		{"500 is kept", func(w http.ResponseWriter) { w.WriteHeader(500) }, 500, "upstream_status", "new", "500", "replayed", false},
		{"422 of the upstream is kept", func(w http.ResponseWriter) { w.WriteHeader(422) }, 422, "ok", "new", "422", "replayed", false},
		{"503 releases", func(w http.ResponseWriter) { w.WriteHeader(503) }, 503, "upstream_status", "released", "503", "upstream_status", true},
		{"429 releases", func(w http.ResponseWriter) { w.WriteHeader(429) }, 429, "ok", "released", "429", "ok", true},
		{"a reset after the body was read is kept as 502", hangUp, 502, "reset", "new", "502", "replayed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) { tc.answer(w) })
			g := loadGateway(t, idemSite(up.addr, ""))
			// records outlive a config reload: a key of its own
			key := "k-" + strings.ReplaceAll(tc.name, " ", "-")
			res, _ := keyed(t, g, key, "x")
			expectKeyed(t, res, tc.status, tc.outcome, tc.idem)
			res, body := keyed(t, g, key, "x")
			if strconv.Itoa(res.StatusCode) != tc.again || res.Header.Get("X-Outcome") != tc.againOutcome {
				t.Fatalf("repeat: %d %q, want %s %q", res.StatusCode, res.Header.Get("X-Outcome"), tc.again, tc.againOutcome)
			}
			if tc.againOutcome == "replayed" && res.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatal("a replay without Idempotent-Replayed: true")
			}
			if tc.outcome == "reset" {
				expectProblem(t, res, body, http.StatusBadGateway)
			}
			want := 1
			if tc.sent {
				// the upstream did nothing: each request was tried three
				// times, the key claimed all along, and then released
				want = 6
			}
			if got := up.of(key); got != want {
				t.Fatalf("executed %d times, want %d", got, want)
			}
		})
	}
	t.Run("nothing sent releases", func(t *testing.T) {
		g := loadGateway(t, idemSite(closedPort(t), ""))
		res, _ := keyed(t, g, "never-sent", "x")
		expectKeyed(t, res, http.StatusBadGateway, "connect_error", "released")
		res, _ = keyed(t, g, "never-sent", "x")
		expectKeyed(t, res, http.StatusBadGateway, "connect_error", "released")
	})
}

func TestIdempotencyClientThatLeavesDoesNotLoseTheAnswer(t *testing.T) {
	arrived := make(chan struct{}, 1)
	canceled := make(chan struct{}, 1)
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		arrived <- struct{}{}
		select {
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
			canceled <- struct{}{} // the gateway gave up on it
			return
		}
		io.WriteString(w, "booked "+body)
	})
	g := loadGateway(t, idemSite(up.addr, ""))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost:9080/orders", strings.NewReader("seat=4"))
	req.Header.Set("Idempotency-Key", "trip-1")
	done := make(chan error, 1)
	go func() {
		res, err := g.Client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	<-arrived
	cancel() // the client times out, the request was sent
	<-done
	var res *http.Response
	var body string
	poll(t, 3*time.Second, "the answer kept for the repeat", func() bool {
		res, body = keyed(t, g, "trip-1", "seat=4")
		return res.StatusCode != http.StatusConflict
	})
	expectKeyed(t, res, http.StatusOK, "replayed", "replayed")
	if body != "booked seat=4" {
		t.Fatalf("replay %q", body)
	}
	select {
	case <-canceled:
		t.Fatal("the upstream request was canceled when its client left")
	default:
	}
	if got := up.of("trip-1"); got != 1 {
		t.Fatalf("executed %d times, want 1", got)
	}
}

func TestIdempotencyLargeAnswerStreamsAndIsNotKept(t *testing.T) {
	const size = 4 << 20
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		chunk := strings.Repeat("z", 64<<10)
		for i := 0; i < size/len(chunk); i++ {
			io.WriteString(w, chunk)
		}
	})
	g := loadGateway(t, idemSite(up.addr, "max_response 1MiB"))
	res, body := keyed(t, g, "big", "x")
	expectKeyed(t, res, http.StatusOK, "ok", "new")
	if len(body) != size {
		t.Fatalf("the first client got %d bytes of %d", len(body), size)
	}
	res, body = keyed(t, g, "big", "x")
	expectKeyed(t, res, http.StatusConflict, "key_conflict", "conflict")
	expectProblem(t, res, body, http.StatusConflict)
	if ra := res.Header.Get("Retry-After"); ra != "" {
		t.Fatalf("Retry-After %q for a key whose answer was not kept: repeating will not help", ra)
	}
	if got := up.of("big"); got != 1 {
		t.Fatalf("executed %d times, want 1", got)
	}
}

func TestIdempotencyKeysAreScopedByAuthorization(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		io.WriteString(w, "for "+r.Header.Get("Authorization"))
	})
	g := loadGateway(t, idemSite(up.addr, ""))
	_, alice := keyed(t, g, "shared", "x", "Authorization", "Bearer alice")
	res, bob := keyed(t, g, "shared", "x", "Authorization", "Bearer bob")
	expectKeyed(t, res, http.StatusOK, "ok", "new")
	if alice != "for Bearer alice" || bob != "for Bearer bob" {
		t.Fatalf("answers %q and %q: one crossed to the other caller", alice, bob)
	}
	res, again := keyed(t, g, "shared", "x", "Authorization", "Bearer alice")
	expectKeyed(t, res, http.StatusOK, "replayed", "replayed")
	if again != alice {
		t.Fatalf("alice's repeat got %q", again)
	}
	if up.of("shared", "Bearer alice") != 1 || up.of("shared", "Bearer bob") != 1 {
		t.Fatalf("executions: alice %d, bob %d, want 1 each", up.of("shared", "Bearer alice"), up.of("shared", "Bearer bob"))
	}
}

func TestIdempotencyOldestAnswersGoFirstUnderMaxMemory(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		io.WriteString(w, strings.Repeat("a", 100<<10))
	})
	g := loadGateway(t, idemSite(up.addr, "max_response 200KiB\n max_memory 512KiB"))
	for i := range 8 { // 800 KiB of answers into 512 KiB
		keyed(t, g, "mem"+strconv.Itoa(i), "x")
	}
	keyed(t, g, "mem0", "x") // dropped: sent again
	keyed(t, g, "mem7", "x") // kept: replayed
	if up.of("mem0") != 2 || up.of("mem7") != 1 {
		t.Fatalf("executions: oldest %d, newest %d; want the oldest dropped (2) and the newest kept (1)", up.of("mem0"), up.of("mem7"))
	}
	s := metricsScrape(t)
	if b := metricsValue(s, "caddy_resilient_idempotency_bytes", nil); b <= 0 || b > 512<<10 {
		t.Fatalf("idempotency_bytes %v, want within max_memory", b)
	}
	if n := metricsValue(s, "caddy_resilient_idempotency_records", nil); n < 1 {
		t.Fatalf("idempotency_records %v", n)
	}
}

// A reload that changes every setting of the store (ttl, max_memory,
// max_response) keeps every record: a completed one replays, and one in
// flight through the reload is still caught, then kept by the old
// config's request and replayed by the new config.
func TestIdempotencyRecordsOutliveAReloadThatChangesSettings(t *testing.T) {
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		if r.Header.Get("Idempotency-Key") == "reload-flying" {
			held <- struct{}{}
			<-hold
		}
		io.WriteString(w, "done "+body)
	})
	g := loadGateway(t, idemSite(up.addr, "ttl 1h\n max_memory 1MiB\n wait 0"))
	res, _ := keyed(t, g, "reload-done", "a")
	expectKeyed(t, res, http.StatusOK, "ok", "new")
	first := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/orders", strings.NewReader("b"))
		req.Header.Set("Idempotency-Key", "reload-flying")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- err.Error()
			return
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		first <- string(body)
	}()
	<-held

	g = loadGateway(t, idemSite(up.addr, "ttl 2h\n max_memory 2MiB\n max_response 512KiB\n wait 0"))
	res, body := keyed(t, g, "reload-done", "a")
	expectKeyed(t, res, http.StatusOK, "replayed", "replayed")
	if body != "done a" {
		t.Fatalf("replay after the reload: %q", body)
	}
	res, _ = keyed(t, g, "reload-flying", "b")
	expectKeyed(t, res, http.StatusConflict, "key_conflict", "conflict")
	close(hold)
	if got := <-first; got != "done b" {
		t.Fatalf("the first request, in flight through the reload, got %q", got)
	}
	res, body = keyed(t, g, "reload-flying", "b")
	expectKeyed(t, res, http.StatusOK, "replayed", "replayed")
	if body != "done b" || up.of("reload-done") != 1 || up.of("reload-flying") != 1 {
		t.Fatalf("replay %q; executions %d and %d, want 1 each", body, up.of("reload-done"), up.of("reload-flying"))
	}
}

// The first request's answer streams to its client as the upstream
// sends it: nothing is held back to be kept.
func TestIdempotencyFirstAnswerStillStreams(t *testing.T) {
	read := make(chan struct{})
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-read:
		case <-time.After(5 * time.Second):
			return // the client never saw the first event
		}
		io.WriteString(w, "data: second\n\n")
	})
	g := loadGateway(t, idemSite(up.addr, ""))
	req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/orders", strings.NewReader("x"))
	req.Header.Set("Idempotency-Key", "stream")
	res, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	close(read)
	rest, _ := io.ReadAll(br)
	if string(rest) != "\ndata: second\n\n" {
		t.Fatalf("rest %q", rest)
	}
	res2, body := keyed(t, g, "stream", "x")
	expectKeyed(t, res2, http.StatusOK, "replayed", "replayed")
	if body != "data: first\n\ndata: second\n\n" {
		t.Fatalf("replay %q", body)
	}
}

// poll waits until cond holds, failing t after d.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Without an idempotency block the placeholder is empty, never its name.
func TestIdempotencyPlaceholderIsNeverLeftUnset(t *testing.T) {
	up := startExecutions(t, func(w http.ResponseWriter, r *http.Request, body string) {})
	g := loadGateway(t, fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		transport resilient
		header_down X-Idem "[{http.resilient.idempotency}]"
	}
}
`, up.addr))
	res, _ := keyed(t, g, "k", "x")
	if got := res.Header.Get("X-Idem"); got != "[]" {
		t.Fatalf("X-Idem %q, want the placeholder empty", got)
	}
}
