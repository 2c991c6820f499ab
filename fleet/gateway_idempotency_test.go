//go:build linux

package fleet_test

// End-to-end tests of the gateway's Idempotency-Key records in a fleet
// (SPEC §13, "Fleet"): several real Caddy processes sharing a real
// redis-server, as in gateway_test.go, in front of an upstream that
// counts how many times each key was executed.

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// keyedUpstream is an upstream that holds each request for a while and
// counts its executions per key (Authorization and Idempotency-Key, the
// gateway's default scope on one host), and how many of them are under
// way. Each execution answers 200 with a body and an X-Exec header of
// its own, so that a replay can be told from a second execution.
type keyedUpstream struct {
	*httptest.Server
	hold   atomic.Int64 // nanoseconds
	seq    atomic.Int64
	mu     sync.Mutex
	execs  map[string]int
	active map[string]int
	by     map[string]int // by gateway
}

func newKeyedUpstream(t *testing.T, hold time.Duration) *keyedUpstream {
	u := &keyedUpstream{execs: map[string]int{}, active: map[string]int{}, by: map[string]int{}}
	u.hold.Store(int64(hold))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := execID(r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key"))
		n := u.seq.Add(1)
		u.mu.Lock()
		u.execs[id]++
		u.active[id]++
		u.by[r.Header.Get("X-Gateway")]++
		u.mu.Unlock()
		defer func() {
			u.mu.Lock()
			u.active[id]--
			u.mu.Unlock()
		}()
		hold := time.NewTimer(time.Duration(u.hold.Load()))
		defer hold.Stop()
		select {
		case <-hold.C:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Exec", strconv.FormatInt(n, 10))
		fmt.Fprintf(w, "execution %d of %s, sent by %s, body of %d bytes", n, id, r.Header.Get("X-Gateway"), len(body))
	}))
	t.Cleanup(u.Close)
	return u
}

func execID(auth, key string) string { return auth + "|" + key }

func (u *keyedUpstream) addr() string { return u.Listener.Addr().String() }

// executions returns how many requests with the key reached it.
func (u *keyedUpstream) executions(auth, key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.execs[execID(auth, key)]
}

// inFlight returns how many requests with the key it is holding now.
func (u *keyedUpstream) inFlight(auth, key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.active[execID(auth, key)]
}

// count returns how many requests the gateway named gw sent it.
func (u *keyedUpstream) count(gw string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.by[gw]
}

// idemOptions is the transport block of these tests: the gateway keeps
// the records, with the given wait, and does not retry keyed POSTs
// itself.
func idemOptions(wait time.Duration) string {
	return fmt.Sprintf(`				retry {
					idempotency_header off
				}
				idempotency {
					wait %s
				}`, wait)
}

// keyedAnswer is a gateway's answer to a keyed POST.
type keyedAnswer struct {
	status     int
	outcome    string
	replayed   string // Idempotent-Replayed
	retryAfter string
	exec       string // the upstream's X-Exec
	body       string
	took       time.Duration
	err        error
}

func (a keyedAnswer) String() string {
	if a.err != nil {
		return fmt.Sprintf("error after %s: %v", a.took.Round(time.Millisecond), a.err)
	}
	return fmt.Sprintf("%d %q (Idempotent-Replayed %q, Retry-After %q, X-Exec %q) in %s: %.120q",
		a.status, a.outcome, a.replayed, a.retryAfter, a.exec, a.took.Round(time.Millisecond), a.body)
}

// isFirst: the answer of the request that was executed.
func (a keyedAnswer) isFirst() bool {
	return a.err == nil && a.status == http.StatusOK && a.outcome == "ok" && a.replayed == "" && a.exec != ""
}

// isReplay: the stored answer of an earlier execution.
func (a keyedAnswer) isReplay() bool {
	return a.err == nil && a.status == http.StatusOK && a.outcome == "replayed" && a.replayed == "true" && a.exec != ""
}

// isConflict: 409 while the first is in flight, with Retry-After.
func (a keyedAnswer) isConflict() bool {
	if a.err != nil || a.status != http.StatusConflict || a.outcome != "key_conflict" || a.exec != "" {
		return false
	}
	n, err := strconv.Atoi(a.retryAfter)
	return err == nil && n >= 1
}

// post sends a keyed POST to the instance's site.
func (g *gateway) post(path, auth, key, body string) keyedAnswer {
	return g.postWith(client, path, auth, key, body)
}

func (g *gateway) postWith(c *http.Client, path, auth, key, body string) keyedAnswer {
	req, err := http.NewRequest(http.MethodPost, "http://"+g.http+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	req.Header.Set("Idempotency-Key", key)
	start := time.Now()
	res, err := c.Do(req)
	if err != nil {
		return keyedAnswer{err: err, took: time.Since(start)}
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	return keyedAnswer{status: res.StatusCode, outcome: res.Header.Get("X-Outcome"),
		replayed: res.Header.Get("Idempotent-Replayed"), retryAfter: res.Header.Get("Retry-After"),
		exec: res.Header.Get("X-Exec"), body: string(b), took: time.Since(start), err: err}
}

// A repeat on another instance is caught: while the first is in flight
// it gets 409 with Retry-After, once the first answered it gets that
// answer as a replay, and the key with another body gets 422; the
// upstream executes the key once. Another caller (Authorization) with
// the same key is another key.
func TestGatewayIdemRepeatOnAnotherInstance(t *testing.T) {
	rdb := startRedis(t)
	up := newKeyedUpstream(t, 500*time.Millisecond)
	fl := startFleet(t, 2, rdb, routes(proxyRoute("/pay", up.addr(), idemOptions(0))))
	a, b := fl.gws[0], fl.gws[1]
	const auth, key, body = "Bearer caller-1", "order-1", `{"amount":100}`

	first := make(chan keyedAnswer, 1)
	go func() { first <- a.post("/pay", auth, key, body) }()
	poll(t, 5*time.Second, "the upstream holds "+a.name+"'s request", func() bool { return up.inFlight(auth, key) == 1 })
	r := b.post("/pay", auth, key, body)
	if up.inFlight(auth, key) != 1 {
		t.Fatalf("%s's request ended before %s answered the repeat (%s): the repeat was not made while it was in flight", a.name, b.name, r)
	}
	if !r.isConflict() {
		t.Errorf("the repeat to %s while %s's request is in flight: %s; want 409 key_conflict with Retry-After", b.name, a.name, r)
	}
	got := <-first
	if !got.isFirst() {
		t.Fatalf("the first request, to %s: %s; want the upstream's 200", a.name, got)
	}

	r = b.post("/pay", auth, key, body)
	if !r.isReplay() || r.body != got.body || r.exec != got.exec {
		t.Errorf("the repeat to %s after %s answered: %s; want the replay of %s's answer %s", b.name, a.name, r, a.name, got)
	}
	if r := b.post("/pay", auth, key, `{"amount":999}`); r.err != nil || r.status != http.StatusUnprocessableEntity || r.outcome != "key_mismatch" || r.exec != "" {
		t.Errorf("the key with another body to %s: %s; want 422 key_mismatch", b.name, r)
	}
	if r := a.post("/pay", auth, key, body); !r.isReplay() || r.body != got.body {
		t.Errorf("the repeat to %s itself: %s; want the replay", a.name, r)
	}
	if n := up.executions(auth, key); n != 1 {
		t.Errorf("the upstream executed key %q %d times, want exactly 1", key, n)
	}
	if n := up.count(b.name); n != 0 {
		t.Errorf("%s sent the upstream %d requests, want none: every one was a repeat", b.name, n)
	}

	// the scope: another caller's key of the same name is its own
	other := b.post("/pay", "Bearer caller-2", key, body)
	if !other.isFirst() || other.exec == got.exec {
		t.Errorf("the same key from another caller, to %s: %s; want an execution of its own", b.name, other)
	}
	if r := a.post("/pay", "Bearer caller-2", key, body); !r.isReplay() || r.body != other.body {
		t.Errorf("the other caller's repeat, to %s: %s; want the replay of %s", a.name, r, other)
	}
	if n := up.executions("Bearer caller-2", key); n != 1 {
		t.Errorf("the upstream executed the other caller's key %d times, want exactly 1", n)
	}

	// the gauges show the records kept on the instance that executed
	if n, ok := a.metric("caddy_resilient_idempotency_records "); !ok || n < 1 {
		t.Errorf("caddy_resilient_idempotency_records on %s: %v (present: %v), want at least 1", a.name, n, ok)
	}
	if n, ok := a.metric("caddy_resilient_idempotency_bytes "); !ok || n < float64(len(got.body)) {
		t.Errorf("caddy_resilient_idempotency_bytes on %s: %v (present: %v), want at least the %d bytes of the kept body", a.name, n, ok, len(got.body))
	}
	t.Logf("first on %s: %s; the replay on %s took %s", a.name, got, b.name, r.took.Round(time.Millisecond))
}

// With wait, a repeat on another instance while the first is in flight
// waits for the first's answer and gets it as a replay.
func TestGatewayIdemWaitAcrossInstances(t *testing.T) {
	rdb := startRedis(t)
	up := newKeyedUpstream(t, 300*time.Millisecond)
	fl := startFleet(t, 2, rdb, routes(proxyRoute("/pay", up.addr(), idemOptions(time.Second))))
	a, b := fl.gws[0], fl.gws[1]
	const auth, key, body = "Bearer caller-1", "order-wait", `{"amount":100}`

	first := make(chan keyedAnswer, 1)
	go func() { first <- a.post("/pay", auth, key, body) }()
	poll(t, 5*time.Second, "the upstream holds "+a.name+"'s request", func() bool { return up.inFlight(auth, key) == 1 })
	r := b.post("/pay", auth, key, body)
	got := <-first
	if !got.isFirst() {
		t.Fatalf("the first request, to %s: %s; want the upstream's 200", a.name, got)
	}
	if !r.isReplay() || r.body != got.body || r.exec != got.exec {
		t.Errorf("the repeat to %s, made while %s's request was in flight: %s; want it to wait and get the replay of %s", b.name, a.name, r, got)
	}
	if r.took >= time.Second {
		t.Errorf("the repeat to %s took %s: it should have had the first's answer soon after the first (300ms), well before its wait (1s) ran out", b.name, r.took)
	}
	if n := up.executions(auth, key); n != 1 {
		t.Errorf("the upstream executed key %q %d times, want exactly 1", key, n)
	}
	t.Logf("first on %s in %s; the waiting repeat on %s got its replay in %s", a.name, got.took.Round(time.Millisecond), b.name, r.took.Round(time.Millisecond))
}

// Ten requests with one key at once, spread over two instances: the
// upstream executes the key once. Without wait the others get 409;
// with wait every one gets the first's answer.
func TestGatewayIdemConcurrentRepeats(t *testing.T) {
	rdb := startRedis(t)
	up := newKeyedUpstream(t, 500*time.Millisecond)
	fl := startFleet(t, 2, rdb, routes(
		proxyRoute("/now", up.addr(), idemOptions(0))+
			proxyRoute("/wait", up.addr(), idemOptions(3*time.Second))))
	const n, auth, body = 10, "Bearer caller-1", `{"amount":100}`

	for _, path := range []string{"/now", "/wait"} {
		key := "order-concurrent" + strings.ReplaceAll(path, "/", "-")
		start := make(chan struct{})
		answers := make([]keyedAnswer, n)
		var wg sync.WaitGroup
		for i := range n {
			g := fl.gws[i%len(fl.gws)]
			wg.Go(func() {
				<-start
				answers[i] = g.post(path, auth, key, body)
			})
		}
		close(start)
		wg.Wait()

		var firsts, replays, conflicts []keyedAnswer
		for i, r := range answers {
			switch {
			case r.isFirst():
				firsts = append(firsts, r)
			case r.isReplay():
				replays = append(replays, r)
			case r.isConflict():
				conflicts = append(conflicts, r)
			default:
				t.Errorf("%s: request %d, to %s: %s; want 200 (first or replayed) or 409", path, i, fl.gws[i%len(fl.gws)].name, r)
			}
		}
		if e := up.executions(auth, key); e != 1 {
			t.Errorf("%s: the upstream executed key %q %d times for %d requests at once, want exactly 1", path, key, e, n)
		}
		if len(firsts) != 1 {
			t.Errorf("%s: %d answers were executions, want exactly 1: %v", path, len(firsts), firsts)
		}
		for _, r := range replays {
			if len(firsts) == 1 && (r.body != firsts[0].body || r.exec != firsts[0].exec) {
				t.Errorf("%s: a replay %s is not the first's answer %s", path, r, firsts[0])
			}
		}
		if path == "/wait" && len(replays) != n-1 {
			t.Errorf("%s: %d replays and %d conflicts, want every repeat (%d) to wait for the first's answer", path, len(replays), len(conflicts), n-1)
		}
		t.Logf("%s: %d requests at once over %d instances: %d executed, %d replayed, %d conflicts (409)", path, n, len(fl.gws), len(firsts), len(replays), len(conflicts))
	}
}

// Redis killed under keyed load, and started again: no request hangs
// or fails, a repeat on the same instance is still caught while Redis
// is gone (the instance's own records), the failures are counted, and
// once Redis is back a repeat on another instance is caught again.
func TestGatewayIdemRedisKilledUnderLoad(t *testing.T) {
	rdb := startRedis(t)
	up := newKeyedUpstream(t, 30*time.Millisecond)
	fl := startFleet(t, 2, rdb, routes(proxyRoute("/pay", up.addr(), idemOptions(0))))
	a, b := fl.gws[0], fl.gws[1]
	const (
		auth     = "Bearer caller-1"
		body     = `{"amount":100}`
		workers  = 3 // per instance
		killAt   = time.Second
		downFor  = time.Second
		duration = 3500 * time.Millisecond
		slow     = 2 * time.Second // no answer may take this long
	)
	// a client bound of its own, well above slow: a request that hangs
	// shows as slow, not as the shared client's 10s timeout
	c := &http.Client{Transport: client.Transport, Timeout: 5 * time.Second}
	idemErrors := func() map[string]float64 {
		m := map[string]float64{}
		for _, g := range fl.gws {
			m[g.name], _ = g.metric(`caddy_resilient_fleet_errors_total{op="idempotency"}`)
		}
		return m
	}
	errorsBefore := idemErrors()

	// per key, its three requests to one instance: two at once, a third
	// once both answered
	type keyRun struct {
		g       *gateway
		key     string
		started time.Duration
		answers [3]keyedAnswer
	}
	var (
		mu        sync.Mutex
		runs      []*keyRun
		wg        sync.WaitGroup
		killed    atomic.Int64 // since start, once killed
		restarted atomic.Int64
	)
	start := time.Now()
	stop := start.Add(duration)
	for _, g := range fl.gws {
		for w := range workers {
			wg.Go(func() {
				for i := 0; time.Now().Before(stop); i++ {
					run := &keyRun{g: g, key: fmt.Sprintf("load-%s-%d-%d", g.name, w, i), started: time.Since(start)}
					var pair sync.WaitGroup
					for j := range 2 {
						pair.Go(func() { run.answers[j] = g.postWith(c, "/pay", auth, run.key, body) })
					}
					pair.Wait()
					run.answers[2] = g.postWith(c, "/pay", auth, run.key, body)
					mu.Lock()
					runs = append(runs, run)
					mu.Unlock()
				}
			})
		}
	}
	time.Sleep(killAt) // the schedule of the load, not an assertion
	rdb.kill()
	killed.Store(int64(time.Since(start)))
	time.Sleep(downFor)
	rdb.start()
	restarted.Store(int64(time.Since(start)))
	wg.Wait()
	t.Logf("redis-server killed at %s, answering again at %s; the load ran for %s",
		time.Duration(killed.Load()).Round(time.Millisecond), time.Duration(restarted.Load()).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	phase := func(r *keyRun) string {
		switch {
		case r.started < time.Duration(killed.Load()):
			return "before the kill"
		case r.started < time.Duration(restarted.Load()):
			return "while redis was down"
		}
		return "after the restart"
	}
	var (
		failed   []string
		slowest  time.Duration
		requests int
		byPhase  = map[string]int{}
		execHist = map[int]int{} // executions per key: keys
		verdicts = map[string]int{}
	)
	for _, r := range runs {
		byPhase[phase(r)]++
		e := up.executions(auth, r.key)
		execHist[e]++
		if e != 1 {
			failed = append(failed, fmt.Sprintf("key %s on %s (%s): executed %d times, want exactly 1: %v", r.key, r.g.name, phase(r), e, r.answers))
		}
		firsts := 0
		for j, ans := range r.answers {
			requests++
			slowest = max(slowest, ans.took)
			kind := ""
			switch {
			case ans.isFirst():
				kind, firsts = "executed", firsts+1
			case ans.isReplay():
				kind = "replayed"
			case ans.isConflict():
				kind = "409"
			}
			verdicts[kind]++
			if kind == "" || ans.took > slow {
				failed = append(failed, fmt.Sprintf("key %s on %s (%s), request %d: %s; want 200 or 409 within %s", r.key, r.g.name, phase(r), j+1, ans, slow))
			}
			if j == 2 && kind != "replayed" && kind != "409" {
				failed = append(failed, fmt.Sprintf("key %s on %s (%s): the repeat after both answered: %s; want it caught (replayed or 409)", r.key, r.g.name, phase(r), ans))
			}
		}
		if firsts > 1 {
			failed = append(failed, fmt.Sprintf("key %s on %s (%s): %d answers were executions: %v", r.key, r.g.name, phase(r), firsts, r.answers))
		}
	}
	hist := make([]string, 0, len(execHist))
	for _, e := range slices.Sorted(maps.Keys(execHist)) {
		hist = append(hist, fmt.Sprintf("%d key(s) executed %d time(s)", execHist[e], e))
	}
	t.Logf("%d keys, %d requests (keys by phase: %v); answers: %v; slowest %s; upstream executions per key: %s",
		len(runs), requests, byPhase, verdicts, slowest.Round(time.Millisecond), strings.Join(hist, ", "))
	if len(failed) > 0 {
		t.Errorf("%d failures while Redis was killed and started again:\n%s", len(failed), strings.Join(failed, "\n"))
	}
	if byPhase["while redis was down"] < 10 {
		t.Errorf("only %d keys were sent while Redis was down: the test proves little of that time", byPhase["while redis was down"])
	}
	errorsAfter := idemErrors()
	grew := false
	for _, g := range fl.gws {
		grew = grew || errorsAfter[g.name] > errorsBefore[g.name]
	}
	t.Logf(`caddy_resilient_fleet_errors_total{op="idempotency"}: before %v, after %v`, errorsBefore, errorsAfter)
	if !grew {
		t.Errorf(`caddy_resilient_fleet_errors_total{op="idempotency"} did not grow on any instance while Redis was killed: before %v, after %v`, errorsBefore, errorsAfter)
	}

	// back in the fleet: a repeat on the other instance is caught again
	tries := 0
	var twice []string
	back := poll(t, 10*time.Second, "a repeat on "+b.name+" of a key executed on "+a.name+" is caught again after Redis came back", func() bool {
		tries++
		key := fmt.Sprintf("back-%d", tries)
		got := a.postWith(c, "/pay", auth, key, body)
		if !got.isFirst() {
			t.Fatalf("a new key to %s after the restart: %s", a.name, got)
		}
		r := b.postWith(c, "/pay", auth, key, body)
		if r.isReplay() && r.exec == got.exec {
			return true
		}
		if e := up.executions(auth, key); e > 1 {
			twice = append(twice, fmt.Sprintf("%s: %d", key, e))
		}
		return false
	})
	t.Logf("after the load, a cross-instance repeat was caught again within %s (%d tries; keys executed again on %s meanwhile: %v)", back.Round(time.Millisecond), tries, b.name, twice)
}
