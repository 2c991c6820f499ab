package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// The same seed draws the same targets and callers, another seed others,
// and every target and caller comes up.
func TestReadsDrawEveryTargetAndCallerFromTheSeed(t *testing.T) {
	a, b, c := &reads{Targets: 300, Callers: 4, seed: 1}, &reads{Targets: 300, Callers: 4, seed: 1}, &reads{Targets: 300, Callers: 4, seed: 2}
	seen, same := map[[2]int]bool{}, 0
	for i := range 20000 {
		ta, ca := a.pick(i)
		tb, cb := b.pick(i)
		tc, cc := c.pick(i)
		if ta != tb || ca != cb {
			t.Fatalf("request %d: seed 1 drew %d/%d, then %d/%d", i, ta, ca, tb, cb)
		}
		if ta == tc && ca == cc {
			same++
		}
		seen[[2]int{ta, ca}] = true
	}
	if len(seen) != 1200 {
		t.Fatalf("%d distinct targets and callers in 20000 draws, want all 1200", len(seen))
	}
	if same > 100 { // 20000/1200 ≈ 17 by chance
		t.Fatalf("seeds 1 and 2 drew the same target and caller for %d requests", same)
	}
}

// The client counts an answer made for another caller as served across
// scopes, and one for another target as wrong: neither is a success.
func TestReadsTellWhoseAnswerTheyGot(t *testing.T) {
	var rewrite func(r *http.Request)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rewrite != nil {
			rewrite(r)
		}
		w.Header().Set("Age", "7")
		w.Write(echoBody(r))
	}))
	defer srv.Close()
	rd := &reads{Targets: 300, Callers: 4, Deadline: time.Second, seed: 1}
	spec := loadSpec{Timeout: 2 * time.Second, Reads: rd,
		Mix: func(int) class { return classGet }, Route: func(int) string { return "/api/" }}
	get := func(i int) sample {
		start := time.Now()
		return spec.do(context.Background(), newClient(), []string{srv.Listener.Addr().String()}, i, start, start)
	}

	s := get(1)
	if !s.ok() || s.Read.Crossed || s.Read.Wrong || s.Read.Age != 7 {
		t.Fatalf("its own answer: status %d, %+v", s.Status, s.Read)
	}
	if s.Read.Made < 0 || s.Read.Made > s.Done {
		t.Fatalf("made %v, done %v: the answer was made while it was asked for", s.Read.Made, s.Done)
	}

	rewrite = func(r *http.Request) { r.Header.Set("Authorization", "Bearer someone-else") }
	if s := get(2); s.ok() || !s.Read.Crossed || s.Status != http.StatusOK {
		t.Fatalf("another caller's answer: ok %v, %+v", s.ok(), s.Read)
	}
	rewrite = func(r *http.Request) { r.URL.Path = "/items/other" }
	if s := get(3); s.ok() || !s.Read.Wrong || s.Read.Crossed {
		t.Fatalf("another target's answer: ok %v, %+v", s.ok(), s.Read)
	}
}

// The stages change what the upstream does, in order: refused, 503,
// hanging, healthy again.
func TestStagesChangeTheUpstreamInOrder(t *testing.T) {
	up, err := startUpstream(false)
	if err != nil {
		t.Fatal(err)
	}
	defer up.close()
	up.setFaults(faults{Echo: true})
	sc := &scenario{Stages: []stage{
		{At: 200 * time.Millisecond, Name: "refused", Refuse: true},
		{At: 400 * time.Millisecond, Name: "503", Faults: faults{Status: 503}},
		{At: 600 * time.Millisecond, Name: "hang", Faults: faults{Hang: true}},
		{At: 800 * time.Millisecond, Name: "back", Faults: faults{Echo: true}},
	}}
	start := time.Now()
	stop := make(chan struct{})
	done := make(chan timeline)
	go func() { done <- (&env{}).timeline(sc, up, start, stop, false) }()

	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 100 * time.Millisecond}
	get := func() (int, error) {
		res, err := c.Get("http://" + up.addr + "/items/1")
		if err != nil {
			return 0, err
		}
		res.Body.Close()
		return res.StatusCode, nil
	}
	at := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
	if code, err := get(); code != 200 {
		t.Fatalf("before the stages: %d %v", code, err)
	}
	at(300 * time.Millisecond)
	if _, err := get(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("refused stage: %v, want the connection refused", err)
	}
	at(500 * time.Millisecond)
	if code, err := get(); code != 503 {
		t.Fatalf("503 stage: %d %v", code, err)
	}
	at(650 * time.Millisecond)
	if code, err := get(); err == nil {
		t.Fatalf("hang stage: answered %d", code)
	}
	at(900 * time.Millisecond)
	if code, err := get(); code != 200 {
		t.Fatalf("back: %d %v", code, err)
	}
	close(stop)
	tl := <-done
	if len(tl.stages) != 4 {
		t.Fatalf("stages began at %v, want 4", tl.stages)
	}
	for i, st := range sc.Stages {
		if tl.stages[i] < st.At || tl.stages[i] > st.At+100*time.Millisecond {
			t.Fatalf("stage %s began at %v, due at %v", st.Name, tl.stages[i], st.At)
		}
	}
}

// The analysis counts the outage's failures that had an answer given
// before, the requests of the breaker's open spans, and answers served
// across scopes.
func TestAnalyzeFallbackCountsWhatAFallbackOwed(t *testing.T) {
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	sc := &scenario{ID: "S13", Load: loadSpec{Reads: &reads{Targets: 10, Callers: 2}},
		Stages: []stage{{Name: "refused"}, {Name: "503"}, {Name: "hang"}, {Name: "back"}}}
	read := func(intended, latency float64, status, target, caller int, made float64) sample {
		return sample{Intended: sec(intended), Done: sec(intended + latency), Latency: sec(latency), Status: status,
			Attempts: -1, Read: &readSeen{Target: target, Caller: caller, Made: sec(made), Age: -1}}
	}
	refused := read(21.5, 0.002, 200, 2, 0, 2) // breaker open: served, nothing sent
	refused.Attempts = 0
	probe := read(21.99, 1.0, 200, 1, 0, 1) // intended while open, let through: a probe
	probe.Attempts = 1
	crossed := read(12, 0.01, 200, 4, 0, 1)
	crossed.Read.Crossed = true
	r := &runData{sc: sc, tl: timeline{stages: []time.Duration{sec(10), sec(20), sec(30), sec(40)}},
		open: []span{{sec(21), sec(22)}},
		samples: []sample{
			read(1, 0.001, 200, 1, 0, 1),       // healthy: target 1 for caller 0 answered
			read(2, 0.001, 200, 2, 0, 2),       // and target 2
			read(9.99, 0.001, 200, 3, 0, 9.99), // too close to its next request to count as kept
			read(11, 0.001, 502, 1, 1, -1),     // another caller: nothing given before, a miss the fallback did not owe
			read(12, 1.0, 200, 1, 0, 1),        // served 12 s old
			refused,
			probe,
			read(21.6, 0.003, 503, 1, 0, -1),  // breaker open: failed, although answered before
			read(31, 1.0, 504, 2, 0, -1),      // failed, although answered before
			read(10.05, 0.001, 502, 3, 0, -1), // its answer came 60ms before: not counted
			crossed,                           // another caller's answer
			read(40, 0.001, 200, 5, 1, 40),    // back: a fresh answer 1ms after
		},
	}
	res := analyze(r)[0]
	x := res.Extra
	want := map[string]float64{
		"outage_requests": 8, "kept_misses": 2, "kept_pct": 100 * 5.0 / 8, "outage_success_pct": 100 * 3.0 / 8,
		"open_requests": 2, "open_let_through": 1, "open_max_ms": 3, "open_after_ms": 11000,
		"crossed_scopes": 1, "stage_refused_pct": 100 * 1.0 / 4, "stage_503_pct": 100 * 2.0 / 3, "stage_hang_pct": 0,
		"recovery_ms": 1, "age_outage_p50_s": 19.502,
	}
	for k, v := range want {
		if got := x[k]; got < v-1e-3 || got > v+1e-3 {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
}
