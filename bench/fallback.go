package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// S13: reads of a few hundred targets by several callers while the
// provider goes down in stages (refused, 503, hanging) and comes back.
// Every answer names the target and the caller it was made for, and
// when: the client tells an answer made for another caller, and how
// old what it got is, whoever served it (Caddy's fallback, nginx's
// cache, the provider).

// stage is a change of what the upstream does, at a time into the run.
type stage struct {
	At   time.Duration
	Name string // refused, 503, hang, back
	// Refuse closes the upstream's port; otherwise Faults apply, with
	// the port open.
	Refuse bool
	Faults faults
}

// span is a stretch of a run, since its start.
type span struct{ From, To time.Duration }

// reads is how S13's clients read: request i GETs one of Targets
// targets (/items/<n>) as one of Callers callers, each with its own
// Authorization, both drawn from the repetition's seed; each sends its
// deadline in X-Request-Timeout, and gives up a little after it
// (loadSpec.Timeout).
type reads struct {
	Targets, Callers int
	Deadline         time.Duration
	seed             uint64 // of the repetition, set by runOne
}

// pick draws the target and the caller of request i.
func (rd *reads) pick(i int) (target, caller int) {
	x := scramble(scramble(rd.seed+0x5133) ^ uint64(i))
	return int(x % uint64(rd.Targets)), int(x / uint64(rd.Targets) % uint64(rd.Callers))
}

func itemPath(target int) string { return "/items/" + strconv.Itoa(target) }
func callerAuth(caller int) string {
	return "Bearer caller-" + strconv.Itoa(caller+1)
}

// readSeen is what a read got, as its client checked it.
type readSeen struct {
	Target, Caller int
	// Made is when the upstream made the answer, since the run's start;
	// -1 when no answer was read
	Made time.Duration
	// Age is the answer's Age header, -1 when it had none
	Age int
	// Crossed: the answer names another caller; Wrong: another target,
	// or it names none
	Crossed, Wrong bool
}

// run sends read s (request i) and checks the answer it gets.
func (rd *reads) run(ctx context.Context, c *http.Client, s *sample, i int, targets []string, start, intended time.Time) {
	target, caller := rd.pick(i)
	seen := &readSeen{Target: target, Caller: caller, Made: -1, Age: -1}
	s.Read = seen
	from := s.sent(intended)
	defer s.done(start, from)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+targets[s.Gateway]+itemPath(target), nil)
	if err != nil {
		panic(fmt.Sprintf("bench: build request: %v", err))
	}
	req.Header.Set("Authorization", callerAuth(caller))
	req.Header.Set("X-Request-Timeout", strconv.FormatFloat(rd.Deadline.Seconds(), 'f', -1, 64))
	req.Header.Set("X-Bench-Id", s.ID)
	res, err := c.Do(req)
	if err != nil {
		return
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	s.setOutcome(res.Header)
	if v := res.Header.Get("X-Cache-Status"); v != "" && s.Outcome == "" {
		s.Outcome = "cache_" + strings.ToLower(v) // nginx's
	}
	if err != nil {
		return // cut short: no answer
	}
	s.Status = res.StatusCode
	if a, err := strconv.Atoi(res.Header.Get("Age")); err == nil {
		seen.Age = a
	}
	if s.Status >= 200 && s.Status < 300 {
		seen.check(body, start)
	}
}

// check reads the answer's body: whom it was made for, and when.
func (seen *readSeen) check(body []byte, start time.Time) {
	var e echo
	if json.Unmarshal(body, &e) != nil || e.Made == 0 {
		seen.Wrong = true
		return
	}
	seen.Made = time.Unix(0, e.Made).Sub(start)
	seen.Wrong = e.Target != itemPath(seen.Target)
	seen.Crossed = e.Caller != callerAuth(seen.Caller)
}

// echo is the body of the upstream's answers in S13.
type echo struct {
	Target string `json:"target"`
	Caller string `json:"caller"` // the request's Authorization
	Made   int64  `json:"made"`   // Unix nanoseconds
	Data   string `json:"data"`
}

var echoPad = strings.Repeat("x", 96)

// echoBody is the answer to r that names it.
func echoBody(r *http.Request) []byte {
	b, _ := json.Marshal(echo{Target: r.URL.Path, Caller: r.Header.Get("Authorization"), Made: time.Now().UnixNano(), Data: echoPad})
	return append(b, '\n')
}

// watchBreaker polls the breakers of the Caddy whose admin endpoint is
// admin, every 10ms, until stop is called, which returns the spans,
// since start, in which the breaker of upstream was open: from the
// answer that showed it open to the end of its open period.
func watchBreaker(ctx context.Context, admin, upstream string, start time.Time) (stop func() []span) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan []span, 1)
	go func() {
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
		defer c.CloseIdleConnections()
		var spans []span
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if until, at, ok := breakerOpenUntil(ctx, c, admin, upstream); ok {
				spans = addSpan(spans, span{From: at.Sub(start), To: until.Sub(start)})
			}
			select {
			case <-ctx.Done():
				done <- spans
				return
			case <-tick.C:
			}
		}
	}()
	return func() []span {
		cancel()
		return <-done
	}
}

// breakerOpenUntil asks admin whether the breaker of upstream is open
// (and open on its own, not by an operator), and until when; at is
// when the answer came.
func breakerOpenUntil(ctx context.Context, c *http.Client, admin, upstream string) (until, at time.Time, ok bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/resilient/breakers", nil)
	if err != nil {
		return
	}
	res, err := c.Do(req)
	if err != nil {
		return
	}
	defer res.Body.Close()
	var bs []struct {
		Upstream  string     `json:"upstream"`
		State     string     `json:"state"`
		OpenUntil *time.Time `json:"open_until"`
	}
	if json.NewDecoder(res.Body).Decode(&bs) != nil {
		return
	}
	at = time.Now()
	for _, b := range bs {
		if b.Upstream == upstream && b.State == "open" && b.OpenUntil != nil {
			return *b.OpenUntil, at, true
		}
	}
	return
}

// addSpan adds s to spans, joined with the last one when they touch.
func addSpan(spans []span, s span) []span {
	if s.To <= s.From {
		return spans
	}
	if n := len(spans); n > 0 && s.From <= spans[n-1].To {
		spans[n-1].To = max(spans[n-1].To, s.To)
		return spans
	}
	return append(spans, s)
}

// within reports whether t is in one of spans.
func within(spans []span, t time.Duration) bool {
	for _, s := range spans {
		if t >= s.From && t < s.To {
			return true
		}
	}
	return false
}

// keptGrace is how long after a client had its answer the proxy is
// given to have kept it.
const keptGrace = 100 * time.Millisecond

// analyzeFallback measures S13 as the clients saw it: success and
// latency during the outage, and while the breaker was open; how old
// the answers were; answers for another caller or target; and the
// requests that failed although an answer for them had been given
// before (the least a fallback could have served). A request intended
// while the breaker was open, but let through (it has attempts), reached
// the breaker after its open period: a probe, not a request the open
// breaker answered.
func analyzeFallback(r *runData, samples []*sample, res *result) {
	st, rd := r.tl.stages, r.sc.Load.Reads
	if len(st) < 2 || rd == nil {
		return
	}
	x := res.Extra
	from, to := st[0], st[len(st)-1]
	key := func(s *sample) int { return s.Read.Target*rd.Callers + s.Read.Caller }
	// when each target and caller first had its answer
	firstOK := map[int]time.Duration{}
	for _, s := range samples {
		if s.Read == nil || !s.ok() {
			continue
		}
		if d, seen := firstOK[key(s)]; !seen || s.Done < d {
			firstOK[key(s)] = s.Done
		}
	}
	stageOf := func(t time.Duration) int {
		k := -1
		for i, at := range st {
			if t >= at {
				k = i
			}
		}
		return k
	}
	var outage, open, openLag, ageOut, ageHealthy []time.Duration
	okOut, kept, misses, letThrough := 0, 0, 0, 0
	crossed, wrong, ageOff, oldAfter := 0, 0, 0, 0
	recovery := time.Duration(-1)
	stageN, stageOK := make([]int, len(st)), make([]int, len(st))
	for _, s := range samples {
		seen := s.Read
		if seen == nil {
			continue
		}
		if seen.Crossed {
			crossed++
		}
		if seen.Wrong {
			wrong++
		}
		age := s.Done - seen.Made
		if s.ok() {
			if seen.Age >= 0 && (float64(seen.Age) > age.Seconds()+0.5 || float64(seen.Age) < age.Seconds()-1.5) {
				ageOff++ // Age says whole seconds since the answer was received
			}
			if seen.Made >= to && (recovery < 0 || s.Done-to < recovery) {
				recovery = s.Done - to
			}
			if s.Intended >= to && seen.Made < to {
				oldAfter++
			}
		}
		switch {
		case s.Intended < from:
			if s.ok() {
				ageHealthy = append(ageHealthy, age)
			}
			continue
		case s.Intended >= to:
			continue
		}
		k := stageOf(s.Intended)
		stageN[k]++
		outage = append(outage, s.Latency)
		switch {
		case r.open == nil || !within(r.open, s.Intended):
		case s.Attempts > 0:
			// let through: it reached the breaker once its open period
			// had ended (a probe), or it would have been refused
			letThrough++
		default:
			open = append(open, s.Latency)
			openLag = append(openLag, s.Lag)
		}
		if first, seen := firstOK[key(s)]; seen && first+keptGrace <= s.Intended {
			kept++
			if !s.ok() {
				misses++
			}
		}
		if s.ok() {
			okOut++
			stageOK[k]++
			ageOut = append(ageOut, age)
		}
	}
	n := len(outage)
	x["outage_requests"] = float64(n)
	if n > 0 {
		x["outage_success_pct"] = 100 * float64(okOut) / float64(n)
		x["kept_pct"] = 100 * float64(kept) / float64(n)
	}
	x["outage_p50_ms"], x["outage_p99_ms"] = pct(outage, 0.5), pct(outage, 0.99)
	x["kept_misses"] = float64(misses)
	for k := range len(st) - 1 {
		if stageN[k] > 0 {
			x["stage_"+r.sc.Stages[k].Name+"_pct"] = 100 * float64(stageOK[k]) / float64(stageN[k])
		}
	}
	if r.open != nil {
		x["open_watched"] = 1
		x["open_requests"], x["open_let_through"] = float64(len(open)), float64(letThrough)
		if len(open) > 0 {
			x["open_p50_ms"], x["open_p99_ms"], x["open_max_ms"] = pct(open, 0.5), pct(open, 0.99), pct(open, 1)
			x["open_lag_p99_ms"] = pct(openLag, 0.99)
		}
		for _, sp := range r.open {
			if sp.To > from {
				x["open_after_ms"] = ms(max(0, sp.From-from)) // how long the breaker took to open
				break
			}
		}
	}
	if len(ageOut) > 0 {
		x["age_outage_p50_s"], x["age_outage_p99_s"] = pct(ageOut, 0.5)/1000, pct(ageOut, 0.99)/1000
	}
	if len(ageHealthy) > 0 {
		x["age_healthy_p50_ms"], x["age_healthy_p99_ms"] = pct(ageHealthy, 0.5), pct(ageHealthy, 0.99)
	}
	x["crossed_scopes"], x["wrong_target"], x["age_header_off"] = float64(crossed), float64(wrong), float64(ageOff)
	x["old_after_outage"] = float64(oldAfter)
	if recovery >= 0 {
		x["recovery_ms"] = ms(recovery)
	}
}

// fallbackNote is S13's part of the notes column.
func fallbackNote(s *summary) string {
	x := s.Extra
	var parts []string
	var stages []string
	for _, name := range []string{"refused", "503", "hang"} {
		if v, ok := x["stage_"+name+"_pct"]; ok {
			stages = append(stages, fmt.Sprintf("%s %.1f%%", name, v))
		}
	}
	if len(stages) > 0 {
		parts = append(parts, "success by stage: "+strings.Join(stages, ", "))
	}
	if v := x["age_header_off"]; v > 0 {
		parts = append(parts, fmt.Sprintf("Age header off by more than a second: %.0f (all reps)", v))
	}
	if v := x["wrong_target"]; v > 0 {
		parts = append(parts, fmt.Sprintf("answers for another target: %.0f (all reps)", v))
	}
	if x["open_watched"] == 1 {
		parts = append(parts, fmt.Sprintf("breaker open %.0fms after the outage began; while open: generator lag p99 %sms, "+
			"max latency %sms; intended while open but let through (probes) %.0f",
			x["open_after_ms"], num(x["open_lag_p99_ms"]), num(x["open_max_ms"]), x["open_let_through"]))
	}
	parts = append(parts, fmt.Sprintf("answers from before the outage once it ended: %.0f", x["old_after_outage"]))
	return strings.Join(parts, "; ")
}

// writeFallbackTable prints S13's own table: what a fallback is for.
func writeFallbackTable(w io.Writer, sums []*summary) {
	var rows []*summary
	for _, s := range sums {
		if s.Scenario == "S13" {
			rows = append(rows, s)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "\n### S13: the provider down for 30 s (medians; counts that must stay 0 summed over the repetitions)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| setup | success % outage | success % overall | outage requests with an answer given before % | failed with an answer given before | p50 / p99 ms outage | p50 / p99 ms breaker open (requests) | age served in the outage p50 / p99 s | age served when healthy p50 / p99 ms | answers across scopes | first fresh answer after the outage |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, s := range rows {
		x := s.Extra
		open := "-"
		if x["open_watched"] == 1 {
			open = fmt.Sprintf("%s / %s (%.0f)", num(x["open_p50_ms"]), num(x["open_p99_ms"]), x["open_requests"])
		}
		ageOut := "-"
		if _, ok := x["age_outage_p50_s"]; ok {
			ageOut = fmt.Sprintf("%.1f / %.1f", x["age_outage_p50_s"], x["age_outage_p99_s"])
		}
		recovery := "-"
		if v, ok := x["recovery_ms"]; ok {
			recovery = fmt.Sprintf("%.0f ms", v)
		}
		fmt.Fprintf(w, "| %s | %.2f | %.2f | %.1f | %.0f | %s / %s | %s | %s | %s / %s | %.0f | %s |\n",
			s.Setup, x["outage_success_pct"], s.SuccessPct, x["kept_pct"], x["kept_misses"],
			num(x["outage_p50_ms"]), num(x["outage_p99_ms"]), open, ageOut,
			num(x["age_healthy_p50_ms"]), num(x["age_healthy_p99_ms"]), x["crossed_scopes"], recovery)
	}
}

// fallbackPeers shows a value of S13's other rows, for a target's
// detail.
func fallbackPeers(find func(row, setup string) *summary, name string, f func(*summary) string) string {
	var parts []string
	for _, setup := range []string{setupCaddyHTTP, setupResilient, setupResilientFallback, setupNginx} {
		if s := find("S13", setup); s != nil {
			parts = append(parts, setup+" "+f(s))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + name + ": " + strings.Join(parts, ", ")
}

// perRun lists a value of each repetition of s, with its seed.
func perRun(s *summary, f func(*result) string) string {
	runs := slices.Clone(s.Runs)
	slices.SortFunc(runs, func(a, b *result) int { return a.Rep - b.Rep })
	var parts []string
	for _, r := range runs {
		parts = append(parts, fmt.Sprintf("%s (seed %d)", f(r), r.Seed))
	}
	return strings.Join(parts, ", ")
}

// fallbackTargets checks S13's goals (SPEC §15): at least nginx's
// success while the provider is down, fast answers while the breaker is
// open and none later than the callers' deadline, no answer across
// scopes, and no failure where an answer had been given before.
func fallbackTargets(add func(id, goal string, f func() (bool, string, bool)),
	find func(row, setup string) *summary, absent func(id string, setups ...string) (bool, string, bool)) {
	fb := func() *summary { return find("S13", setupResilientFallback) }
	add("S13 success", "resilient-fallback: success during the outage ≥ nginx's (proxy_cache_use_stale), median", func() (bool, string, bool) {
		r, n := fb(), find("S13", setupNginx)
		if r == nil || n == nil {
			return absent("S13", setupResilientFallback, setupNginx)
		}
		return r.Extra["outage_success_pct"] >= n.Extra["outage_success_pct"],
			fmt.Sprintf("%.2f%% against %.2f%% (per repetition: %s against %s); with an answer given before: %.1f%%",
				r.Extra["outage_success_pct"], n.Extra["outage_success_pct"],
				perRun(r, func(x *result) string { return fmt.Sprintf("%.2f%%", x.Extra["outage_success_pct"]) }),
				perRun(n, func(x *result) string { return fmt.Sprintf("%.2f%%", x.Extra["outage_success_pct"]) }),
				r.Extra["kept_pct"]) +
				fallbackPeers(find, "success during the outage", func(s *summary) string { return fmt.Sprintf("%.2f%%", s.Extra["outage_success_pct"]) }), true
	})
	add("S13 latency", "resilient-fallback: p99 ≤ 50ms while the breaker is open, and ≤ the callers' deadline (1s) over the outage (median)", func() (bool, string, bool) {
		r := fb()
		if r == nil {
			return absent("S13", setupResilientFallback)
		}
		x := r.Extra
		if x["open_requests"] == 0 {
			return false, "the breaker was never seen open", true
		}
		return x["open_p99_ms"] <= 50 && x["outage_p99_ms"] <= 1000,
			fmt.Sprintf("breaker open: p99 %sms over %.0f requests (per repetition: %s); outage p99 %sms",
				num(x["open_p99_ms"]), x["open_requests"],
				perRun(r, func(x *result) string {
					return fmt.Sprintf("p99 %sms, max %sms, generator lag p99 %sms",
						num(x.Extra["open_p99_ms"]), num(x.Extra["open_max_ms"]), num(x.Extra["open_lag_p99_ms"]))
				}), num(x["outage_p99_ms"])) +
				fallbackPeers(find, "outage p99", func(s *summary) string { return num(s.Extra["outage_p99_ms"]) + "ms" }), true
	})
	add("S13 scopes", "resilient-fallback: no answer served across scopes, nor for another target (every run)", func() (bool, string, bool) {
		r := fb()
		if r == nil {
			return absent("S13", setupResilientFallback)
		}
		return r.Extra["crossed_scopes"] == 0 && r.Extra["wrong_target"] == 0,
			fmt.Sprintf("%.0f across scopes, %.0f for another target, over %d repetitions", r.Extra["crossed_scopes"], r.Extra["wrong_target"], r.Reps) +
				fallbackPeers(find, "across scopes", func(s *summary) string { return fmt.Sprintf("%.0f", s.Extra["crossed_scopes"]) }), true
	})
	add("S13 kept", "resilient-fallback: every outage request whose target and caller had an answer before is answered (every run)", func() (bool, string, bool) {
		r := fb()
		if r == nil {
			return absent("S13", setupResilientFallback)
		}
		return r.Extra["kept_misses"] == 0,
			fmt.Sprintf("%.0f failed over %d repetitions", r.Extra["kept_misses"], r.Reps) +
				fallbackPeers(find, "failed with an answer given before (all reps)", func(s *summary) string { return fmt.Sprintf("%.0f", s.Extra["kept_misses"]) }), true
	})
}
