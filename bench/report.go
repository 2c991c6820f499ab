package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
)

// result is one table row of one run.
type result struct {
	Scenario         string             `json:"scenario"`
	Row              string             `json:"row"`
	Setup            string             `json:"setup"`
	Rep              int                `json:"rep"`
	Seed             uint64             `json:"seed"` // of the upstream's fault draws
	Requests         int                `json:"requests"`
	OK               int                `json:"ok"`
	SuccessPct       float64            `json:"success_pct"`
	P50              float64            `json:"p50_ms"`
	P99              float64            `json:"p99_ms"`
	P999             float64            `json:"p999_ms"`
	RPS              float64            `json:"ok_per_second"`
	UpstreamRequests int                `json:"upstream_requests"`
	Amplification    float64            `json:"amplification"`
	Duplicates       int                `json:"duplicates"` // -1: no POSTs in the row
	EmptyBodies      int                `json:"empty_body_posts"`
	Extra            map[string]float64 `json:"extra,omitempty"`
	Outcomes         map[string]int     `json:"outcomes,omitempty"`
}

// summary is the median of a row's repetitions; counts that must never
// happen (duplicates, early retries, excess concurrency) are kept at
// their worst instead.
type summary struct {
	result
	Reps int       `json:"reps"`
	Runs []*result `json:"-"`
}

// summarize groups results by row and setup, in table order.
func summarize(scs []*scenario, results []*result) []*summary {
	type key struct{ row, setup string }
	groups := map[key][]*result{}
	for _, r := range results {
		k := key{r.Row, r.Setup}
		groups[k] = append(groups[k], r)
	}
	var out []*summary
	for _, sc := range scs {
		var rows []string
		for _, r := range results {
			if r.Scenario == sc.ID && !slices.Contains(rows, r.Row) {
				rows = append(rows, r.Row)
			}
		}
		sort.Strings(rows)
		for _, row := range rows {
			for _, setup := range allSetups {
				rs := groups[key{row, setup}]
				if len(rs) == 0 {
					continue
				}
				out = append(out, median(rs))
			}
		}
	}
	return out
}

func median(rs []*result) *summary {
	s := &summary{Reps: len(rs), Runs: rs}
	s.Scenario, s.Row, s.Setup = rs[0].Scenario, rs[0].Row, rs[0].Setup
	med := func(f func(*result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return medianOf(v)
	}
	worst := func(f func(*result) int) int {
		w := f(rs[0])
		for _, r := range rs[1:] {
			w = max(w, f(r))
		}
		return w
	}
	s.Requests = int(med(func(r *result) float64 { return float64(r.Requests) }))
	s.OK = int(med(func(r *result) float64 { return float64(r.OK) }))
	s.SuccessPct = med(func(r *result) float64 { return r.SuccessPct })
	s.P50 = med(func(r *result) float64 { return r.P50 })
	s.P99 = med(func(r *result) float64 { return r.P99 })
	s.P999 = med(func(r *result) float64 { return r.P999 })
	s.RPS = med(func(r *result) float64 { return r.RPS })
	s.UpstreamRequests = int(med(func(r *result) float64 { return float64(r.UpstreamRequests) }))
	s.Amplification = med(func(r *result) float64 { return r.Amplification })
	s.Duplicates = worst(func(r *result) int { return r.Duplicates })
	s.EmptyBodies = worst(func(r *result) int { return r.EmptyBodies })
	s.Extra = map[string]float64{}
	keys := map[string]bool{}
	for _, r := range rs {
		for k := range r.Extra {
			keys[k] = true
		}
	}
	for k := range keys {
		var v []float64
		for _, r := range rs {
			if x, ok := r.Extra[k]; ok {
				v = append(v, x)
			}
		}
		switch k {
		case "upstream_max_concurrency", "upstream_over_limit", "max_executions", "max_arrivals",
			"max_acting_per_instance", "mismatches", "violations":
			s.Extra[k] = slices.Max(v) // the worst run
		case "got_429", "retried_429", "retried_early", "retried_within_100ms",
			"crossed_scopes", "wrong_target", "kept_misses", "age_header_off":
			s.Extra[k] = sum(v) // events that must never happen: all of them
		case "breaker_opened", "min_gap_ms":
			s.Extra[k] = slices.Min(v)
		default:
			s.Extra[k] = medianOf(v)
		}
	}
	s.Outcomes = map[string]int{}
	for _, r := range rs {
		for k, n := range r.Outcomes {
			s.Outcomes[k] += n
		}
	}
	return s
}

func sum(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// writeTable prints the markdown table of the summaries.
func writeTable(w io.Writer, sums []*summary) {
	fmt.Fprintln(w, "| scenario | setup | success % | p50 ms | p99 ms | p99.9 ms | ok req/s | amplification | duplicates | notes |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, s := range sums {
		dups := "-"
		if s.Duplicates >= 0 {
			dups = fmt.Sprint(s.Duplicates)
		}
		fmt.Fprintf(w, "| %s | %s | %.2f | %s | %s | %s | %.0f | %.3f | %s | %s |\n",
			s.Row, s.Setup, s.SuccessPct, num(s.P50), num(s.P99), num(s.P999), s.RPS, s.Amplification, dups, notes(s))
	}
}

// num prints a latency with sensible precision.
func num(ms float64) string {
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2f", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f", ms)
	}
	return fmt.Sprintf("%.0f", ms)
}

// notes is the scenario-specific column.
func notes(s *summary) string {
	x := s.Extra
	var parts []string
	has := func(k string) bool { _, ok := x[k]; return ok }
	switch s.Scenario {
	case "S0":
		parts = append(parts, fmt.Sprintf("proxy CPU %.0fµs/request", x["proxy_cpu_us_per_req"]))
	case "S2", "S3":
		if has("breaker_opened") {
			if x["breaker_opened"] == 0 {
				parts = append(parts, "breaker did not open in every run")
			}
			if has("open_at_ms") {
				parts = append(parts, fmt.Sprintf("open at %.0fms; rejected p99 %sms (max %sms); upstream after open: %.0f (≤ %.0f probes allowed)",
					x["open_at_ms"], num(x["rejected_p99_ms"]), num(x["rejected_max_ms"]), x["probes"], x["probes_allowed"]))
			}
		}
		if has("refused_connects") {
			parts = append(parts, fmt.Sprintf("refused connects %.0f", x["refused_connects"]))
		}
		if has("recovery_ms") {
			parts = append(parts, fmt.Sprintf("first success %.0fms after the port reopened", x["recovery_ms"]))
		}
	case "S4":
		parts = append(parts, fmt.Sprintf("upstream max concurrency %.0f", x["upstream_max_concurrency"]))
		if x["rejected"] > 0 {
			parts = append(parts, fmt.Sprintf("rejected %.0f: p99 %sms, max %sms", x["rejected"], num(x["rejected_p99_ms"]), num(x["rejected_max_ms"])))
		}
	case "S5", "S5h":
		if s.EmptyBodies > 0 {
			parts = append(parts, fmt.Sprintf("POSTs re-sent with an empty body: %d", s.EmptyBodies))
		}
	case "S10":
		parts = append(parts, fmt.Sprintf("executions/request %.3f (at most %.0f for one, worst run); answered %.0f of %.0f served (%.2f%%); "+
			"sends/request %.2f; 409s %.0f; replays %.0f",
			x["executions_per_request"], x["max_executions"], x["served_answered"], x["served"], x["served_answered_pct"],
			x["sends_per_request"], x["conflicts"], x["replays"]))
	case "S10x":
		parts = append(parts, fmt.Sprintf("%.0f requests with a key (%.0f of them the final sweep's) for %.0f keys over %.0fs, %.0f reloads, %.0f Redis kills; "+
			"executions that may have acted: at most %.0f per key fleet-wide, keys executed twice %d; answers byte-identical to their execution's: "+
			"%.0f first, %.0f replays (%.0f from another instance, %.0f of answers carried past their client, %.0f in the sweep); mismatches %.0f; violations %.0f; "+
			"keys under way while an instance acted alone %.0f (executed again on another instance %.0f, at most %.0f by one); "+
			"409 in flight %.0f, 409 used %.0f, 422 %.0f, replayed no-answer %.0f; hedged GETs %.0f of %.0f",
			x["sends"], x["sweep_sends"], x["keys"], x["load_s"], x["reloads"], x["redis_kills"],
			x["max_executions"], s.Duplicates, x["firsts_identical"], x["replays_identical"], x["replays_cross_instance"], x["replays_of_carried"], x["sweep_replays"],
			x["mismatches"], x["violations"], x["exempt_keys"], x["exempt_executed_again"], x["max_acting_per_instance"],
			x["in_flight_409"], x["used_409"], x["mismatch_422"], x["no_answer_replays"], x["hedged_gets"], x["probes"]))
	case "S10m":
		if has("rss_before_mib") {
			parts = append(parts, fmt.Sprintf("RSS before %.0f MiB, peak %.0f MiB (sampled %.0f MiB at %.0fs), after %.0f MiB: growth %.1f MiB",
				x["rss_before_mib"], x["rss_peak_mib"], x["rss_sampled_peak_mib"], x["rss_peak_at_s"], x["rss_after_mib"], x["rss_growth_mib"]))
		}
		if has("idempotency_bytes_mib") {
			parts = append(parts, fmt.Sprintf("kept answers (gauge) %.1f MiB", x["idempotency_bytes_mib"]))
		}
		if has("go_heap_inuse_mib") {
			parts = append(parts, fmt.Sprintf("Go heap in use at the end %.0f MiB, next GC at %.0f MiB (GOGC %.0f)",
				x["go_heap_inuse_mib"], x["go_next_gc_mib"], x["go_gogc"]))
		}
		parts = append(parts, fmt.Sprintf("%d requests in %.0fs", s.Requests, x["load_s"]))
	case "S11", "S11x":
		parts = append(parts, fmt.Sprintf("extra upstream attempts %.2f%% (the budget's bound %.0f%%), at most %.0f arrivals for one request; "+
			"arrivals that ended before their answer %.0f", x["extra_attempts_pct"], x["budget_bound_pct"], x["max_arrivals"], x["canceled_arrivals"]))
	case "S8":
		parts = append(parts, quotaNote(x))
	case "S13":
		parts = append(parts, fallbackNote(s))
	case "S9":
		switch {
		case s.Row != "S9 dead":
			parts = append(parts, quotaNote(x))
		case x["all_refused"] == 0:
			parts = append(parts, "not every gateway refused in every run")
		default:
			parts = append(parts, fmt.Sprintf("dead provider until every gateway refused (%.0fms): %.0f (%s by gateway); after: %.0f (%s), one gateway's probes allowed %.0f",
				x["all_refused_ms"], x["until_all_refused"], byGateway(x, "until_all_refused"),
				x["after_all_refused"], byGateway(x, "after_all_refused"), x["one_gateway_probes"]))
		}
	case "S12-mixed", "S12-503", "S12-slow", "S12-outage":
		parts = append(parts, shippingNote(s))
	case "S6":
		parts = append(parts, fmt.Sprintf("all reps: 429s %.0f, retried %.0f, before Retry-After %.0f, within 100ms %.0f",
			x["got_429"], x["retried_429"], x["retried_early"], x["retried_within_100ms"]))
		if has("min_gap_ms") {
			parts = append(parts, fmt.Sprintf("shortest wait %.0fms", x["min_gap_ms"]))
		}
	}
	if o := outcomeNote(s); o != "" {
		parts = append(parts, o)
	}
	if f := x["foreign_cpu_cores"]; f >= 0.2 {
		parts = append(parts, fmt.Sprintf("other programs used %.1f cores meanwhile", f))
	}
	if st := x["steal_cpu_cores"]; st >= 0.1 {
		parts = append(parts, fmt.Sprintf("hypervisor steal %.1f cores", st))
	}
	return strings.Join(parts, "; ")
}

func quotaNote(x map[string]float64) string {
	return fmt.Sprintf("429s to clients %.0f; upstream requests above its limit %.0f (worst run)",
		x["client_429"], x["upstream_over_limit"])
}

// byGateway shows a count of S9's split by gateway, e.g. 5/4/4.
func byGateway(x map[string]float64, key string) string {
	var parts []string
	for g := 1; g <= 3; g++ {
		parts = append(parts, fmt.Sprintf("%.0f", x[fmt.Sprintf("%s_g%d", key, g)]))
	}
	return strings.Join(parts, "/")
}

// outcomeNote lists the resilient outcomes other than ok, over all reps.
func outcomeNote(s *summary) string {
	keys := slices.Sorted(maps.Keys(s.Outcomes))
	var parts []string
	for _, k := range keys {
		if k == "ok" {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d", k, s.Outcomes[k]))
	}
	if len(parts) == 0 {
		return ""
	}
	if slices.Contains(shippingIDs, s.Scenario) {
		return "the application was told (all reps): " + strings.Join(parts, ", ")
	}
	return "outcomes (all reps): " + strings.Join(parts, ", ")
}

// target is one goal of the benchmark issue, checked against the summaries.
type target struct {
	ID     string `json:"id"`
	Goal   string `json:"goal"`
	Status string `json:"status"` // MET, NOT MET, NOT YET
	Detail string `json:"detail"`
}

// evaluate checks the targets; failures, by scenario and setup, say why
// a row is missing.
func evaluate(sums []*summary, failures map[runKey]string) []target {
	find := func(row, setup string) *summary {
		for _, s := range sums {
			if s.Row == row && s.Setup == setup {
				return s
			}
		}
		return nil
	}
	var ts []target
	add := func(id, goal string, f func() (bool, string, bool)) {
		ts = append(ts, checkTarget(id, goal, f))
	}
	notRun := func(row string) (bool, string, bool) { return false, row + " not run", false }
	// absent says why the setups a target needs have no row in scenario id
	absent := func(id string, setups ...string) (bool, string, bool) {
		var why []string
		for _, setup := range setups {
			if msg, ok := failures[runKey{id, setup}]; ok {
				why = append(why, msg)
			}
		}
		if len(why) == 0 {
			return false, id + " " + strings.Join(setups, ", ") + " not run", false
		}
		return false, strings.Join(why, "; "), false
	}

	// a shared machine's slow spells hit both setups of a repetition
	// alike: the verdicts go by the median of the per-repetition ratios
	add("S0 throughput", "resilient ≥ 0.97× Caddy transport http (ok req/s, median of the per-repetition ratios)", func() (bool, string, bool) {
		r, h := find("S0", setupResilient), find("S0", setupCaddyHTTP)
		if r == nil || h == nil {
			return notRun("S0")
		}
		q, _ := pairedRatio(r, h, func(x *result) float64 { return x.RPS })
		return q >= 0.97, fmt.Sprintf("%.3f× (paired per repetition: %s; medians %.0f vs %.0f req/s); proxy CPU per request %.0fµs vs %.0fµs",
			q, paired(r, h, func(x *result) float64 { return x.RPS }), r.RPS, h.RPS,
			r.Extra["proxy_cpu_us_per_req"], h.Extra["proxy_cpu_us_per_req"]), true
	})
	add("S0 p99", "resilient p99 ≤ 1.05× Caddy transport http (median of the per-repetition ratios)", func() (bool, string, bool) {
		r, h := find("S0", setupResilient), find("S0", setupCaddyHTTP)
		if r == nil || h == nil {
			return notRun("S0")
		}
		q, _ := pairedRatio(r, h, func(x *result) float64 { return x.P99 })
		return q <= 1.05, fmt.Sprintf("%.3f× (paired per repetition: %s; medians %sms vs %sms)",
			q, paired(r, h, func(x *result) float64 { return x.P99 }), num(r.P99), num(h.P99)), true
	})
	add("S1", "success ≥ 99.8% with amplification ≤ 1.15 (median), and no breaker_open in any run (default breaker)", func() (bool, string, bool) {
		r := find("S1", setupResilient)
		if r == nil {
			return notRun("S1")
		}
		var opens []string
		total := 0
		for _, run := range r.Runs {
			n := run.Outcomes["breaker_open"]
			total += n
			opens = append(opens, fmt.Sprintf("%d (seed %d)", n, run.Seed))
		}
		return r.SuccessPct >= 99.8 && r.Amplification <= 1.15 && total == 0,
			fmt.Sprintf("success %.2f%%, amplification %.3f; breaker_open per run: %s",
				r.SuccessPct, r.Amplification, strings.Join(opens, ", ")), true
	})
	for _, id := range []string{"S2", "S3"} {
		add(id, "once the breaker is open: rejected p99 ≤ 2ms (median) and only half-open probes reach the upstream (every run)", func() (bool, string, bool) {
			r := find(id, setupResilient)
			if r == nil {
				return notRun(id)
			}
			if r.Extra["breaker_opened"] == 0 {
				return false, "the breaker did not open in every run", true
			}
			// the run with the most upstream traffic beyond the probes allowed
			worst := r.Runs[0]
			for _, run := range r.Runs[1:] {
				if run.Extra["probes"]-run.Extra["probes_allowed"] > worst.Extra["probes"]-worst.Extra["probes_allowed"] {
					worst = run
				}
			}
			probesOK := worst.Extra["probes"] <= worst.Extra["probes_allowed"]
			p99 := r.Extra["rejected_p99_ms"]
			return p99 <= 2 && probesOK, fmt.Sprintf("rejected p99 %.2fms (max %.2fms; generator lag p99 %.2fms); upstream after open %.0f, allowed %.0f (worst run)",
				p99, r.Extra["rejected_max_ms"], r.Extra["rejected_lag_p99_ms"], worst.Extra["probes"], worst.Extra["probes_allowed"]), true
		})
	}
	add("S4", "upstream concurrency never above max_conns (10); rejections within pool + 20ms = 120ms (p99, median)", func() (bool, string, bool) {
		r := find("S4", setupResilient)
		if r == nil {
			return notRun("S4")
		}
		c, p99 := r.Extra["upstream_max_concurrency"], r.Extra["rejected_p99_ms"]
		detail := fmt.Sprintf("max concurrency %.0f (worst run); rejected p99 %.1fms, max %.1fms", c, p99, r.Extra["rejected_max_ms"])
		if r.Extra["rejected"] == 0 {
			detail += "; nothing was rejected"
		}
		return c <= 10 && p99 <= 120, detail, true
	})
	add("S5 no key", "zero duplicated POSTs without Idempotency-Key (every run)", func() (bool, string, bool) {
		r := find("S5 no key", setupResilient)
		if r == nil {
			return notRun("S5")
		}
		return r.Duplicates == 0, fmt.Sprintf("%d duplicates (worst run); success %.2f%%", r.Duplicates, r.SuccessPct), true
	})
	add("S5 key", "success ≥ 99.8% with Idempotency-Key (median)", func() (bool, string, bool) {
		r := find("S5 key", setupResilient)
		if r == nil {
			return notRun("S5")
		}
		return r.SuccessPct >= 99.8, fmt.Sprintf("success %.2f%%, amplification %.3f", r.SuccessPct, r.Amplification), true
	})
	add("S6", "no retry before Retry-After elapses (every run), success ≥ 99% (median): the budget does not refuse retries the upstream paced", func() (bool, string, bool) {
		r := find("S6", setupResilient)
		if r == nil {
			return notRun("S6")
		}
		early, retried := r.Extra["retried_early"], r.Extra["retried_429"]
		detail := fmt.Sprintf("%.0f early retries; %.0f of %.0f 429s retried (all runs); shortest wait %.0fms; success %.2f%%",
			early, retried, r.Extra["got_429"], r.Extra["min_gap_ms"], r.SuccessPct)
		if retried == 0 {
			return false, detail + "; never retried, so nothing was shown", true
		}
		return early == 0 && r.SuccessPct >= 99, detail, true
	})
	add("S7", "amplification ≤ 1.25 (median), with the breaker and with the budget alone", func() (bool, string, bool) {
		r := find("S7", setupResilient)
		if r == nil {
			return notRun("S7")
		}
		ok := r.Amplification <= 1.25
		detail := fmt.Sprintf("amplification %.3f", r.Amplification)
		if nb := find("S7", setupResilientNB); nb != nil {
			detail += fmt.Sprintf(" (breaker off, budget only: %.3f)", nb.Amplification)
			ok = ok && nb.Amplification <= 1.25
		}
		return ok, detail, true
	})
	add("S8", "with rate_limit: nothing above the provider's limit (every run), and fewer 429s to clients than any other row (median)", func() (bool, string, bool) {
		rl := find("S8", setupResilientRL)
		if rl == nil {
			return notRun("S8")
		}
		ok := rl.Extra["upstream_over_limit"] == 0
		detail := fmt.Sprintf("resilient-ratelimit: %.0f above the limit, %.0f 429s to clients, success %.2f%%",
			rl.Extra["upstream_over_limit"], rl.Extra["client_429"], rl.SuccessPct)
		for _, setup := range []string{setupCaddyHTTP, setupResilient, setupNginx, setupHAProxy} {
			if o := find("S8", setup); o != nil {
				detail += fmt.Sprintf("; %s: %.0f above, %.0f 429s", setup, o.Extra["upstream_over_limit"], o.Extra["client_429"])
				ok = ok && rl.Extra["client_429"] < o.Extra["client_429"]
			}
		}
		return ok, detail, true
	})
	add("S9", "with the fleet, the dead provider sees the failures of one instance, not three (once every gateway refuses it: "+
		"at most half of no-fleet's, median); nothing above the provider's limit (every run)", func() (bool, string, bool) {
		fd, fq := find("S9 dead", setupFleet), find("S9 quota", setupFleet)
		nd, nq := find("S9 dead", setupNoFleet), find("S9 quota", setupNoFleet)
		if fd == nil || fq == nil || nd == nil || nq == nil {
			return notRun("S9 (both setups)")
		}
		if fd.Extra["all_refused"] == 0 || nd.Extra["all_refused"] == 0 {
			return false, "not every gateway refused the dead provider in every run", true
		}
		ok := fd.Extra["after_all_refused"] <= nd.Extra["after_all_refused"]/2 && fq.Extra["upstream_over_limit"] == 0
		return ok, fmt.Sprintf("dead provider once every gateway refused: fleet %.0f (%s by gateway), no-fleet %.0f (%s); "+
			"until then: fleet %.0f (%s), no-fleet %.0f (%s), as round robin has all three count failures at the same pace; "+
			"quota: above the limit fleet %.0f, no-fleet %.0f (worst run); success fleet %.2f%%, no-fleet %.2f%%; p99 fleet %sms, no-fleet %sms",
			fd.Extra["after_all_refused"], byGateway(fd.Extra, "after_all_refused"), nd.Extra["after_all_refused"], byGateway(nd.Extra, "after_all_refused"),
			fd.Extra["until_all_refused"], byGateway(fd.Extra, "until_all_refused"), nd.Extra["until_all_refused"], byGateway(nd.Extra, "until_all_refused"),
			fq.Extra["upstream_over_limit"], nq.Extra["upstream_over_limit"], fq.SuccessPct, nq.SuccessPct, num(fq.P99), num(nq.P99)), true
	})
	add("S5h key", "resilient: success ≥ 98% with Idempotency-Key on each repetition (20% 503 + 10% reset after the body was read)", func() (bool, string, bool) {
		r := find("S5h key", setupResilient)
		if r == nil {
			return absent("S5h", setupResilient)
		}
		ok, per := everyRun(r, func(run *result) (bool, string) {
			return run.SuccessPct >= 98, fmt.Sprintf("%.2f%% (seed %d)", run.SuccessPct, run.Seed)
		})
		return ok, fmt.Sprintf("per repetition: %s; amplification %.3f%s", per, r.Amplification,
			peersS5h(find, setupResilientNoBudget, setupResilientAttempts, setupCaddyHTTP, setupNginx, setupHAProxy)), true
	})
	add("S5h no key", "resilient: zero duplicated POSTs without Idempotency-Key (every run)", func() (bool, string, bool) {
		r := find("S5h no key", setupResilient)
		if r == nil {
			return absent("S5h", setupResilient)
		}
		return r.Duplicates == 0, fmt.Sprintf("%d duplicates (worst run), success %.2f%%%s", r.Duplicates, r.SuccessPct,
			peersS5h(find, setupCaddyHTTP, setupNginx, setupHAProxy)), true
	})

	idem := []string{setupResilientIdem, setupResilientIdemWait}
	add("S10 once", "resilient-idem and resilient-idem-wait: exactly 1.000 upstream executions per logical request (every run, none executed twice)", func() (bool, string, bool) {
		ok := true
		var parts []string
		for _, setup := range idem {
			r := find("S10", setup)
			if r == nil {
				return absent("S10", idem...)
			}
			once, per := everyRun(r, func(run *result) (bool, string) {
				x := run.Extra
				return x["executions_per_request"] == 1 && x["max_executions"] == 1,
					fmt.Sprintf("%.3f (at most %.0f)", x["executions_per_request"], x["max_executions"])
			})
			ok = ok && once
			parts = append(parts, setup+": "+per)
		}
		return ok, "per repetition: " + strings.Join(parts, "; "), true
	})
	add("S10 others", "every other row: more than 1 upstream execution per logical request (median): the client's resends reach the upstream", func() (bool, string, bool) {
		ok, ran := true, false
		var parts []string
		for _, setup := range []string{setupCaddyHTTP, setupResilient, setupNginx, setupHAProxy} {
			r := find("S10", setup)
			if r == nil {
				continue
			}
			ran = true
			ok = ok && r.Extra["executions_per_request"] > 1
			parts = append(parts, fmt.Sprintf("%s %.3f", setup, r.Extra["executions_per_request"]))
		}
		if !ran {
			return absent("S10", setupCaddyHTTP, setupResilient, setupNginx, setupHAProxy)
		}
		return ok, "executions per logical request: " + strings.Join(parts, ", "), true
	})
	add("S10 wait", "resilient-idem-wait: every logical request the upstream served got its answer (100%, every run)", func() (bool, string, bool) {
		r := find("S10", setupResilientIdemWait)
		if r == nil {
			return absent("S10", setupResilientIdemWait)
		}
		ok, per := everyRun(r, func(run *result) (bool, string) {
			x := run.Extra
			return x["served_answered"] == x["served"], fmt.Sprintf("%.0f of %.0f", x["served_answered"], x["served"])
		})
		detail := "answered of served, per repetition: " + per
		if w := find("S10", setupResilientIdem); w != nil {
			detail += fmt.Sprintf("; resilient-idem (wait 0): %.2f%% (median)", w.Extra["served_answered_pct"])
		}
		return ok, detail, true
	})
	add("S10m", fmt.Sprintf("resilient-idem (max_memory 64MiB): peak RSS growth ≤ 64 MiB + %d MiB (every run)", memSlack>>20), func() (bool, string, bool) {
		r := find("S10m", setupResilientIdem)
		if r == nil {
			return absent("S10m", setupResilientIdem)
		}
		ok, per := everyRun(r, func(run *result) (bool, string) {
			x := run.Extra
			g := x["rss_growth_mib"]
			p := fmt.Sprintf("%.1f MiB (before %.0f, peak %.0f, after %.0f", g, x["rss_before_mib"], x["rss_peak_mib"], x["rss_after_mib"])
			if v, has := x["idempotency_bytes_mib"]; has {
				p += fmt.Sprintf("; gauge %.1f MiB", v)
			}
			return g <= mib(memLimit+memSlack), p + ")"
		})
		detail := "growth per repetition: " + per
		if b := find("S10m", setupResilient); b != nil {
			detail += fmt.Sprintf("; the same load without idempotency (resilient): %.1f MiB", b.Extra["rss_growth_mib"])
		}
		return ok, detail, true
	})
	add("S10x", "one execution per key through a fleet of three, with faults, reloads and Redis kills: no key executed twice (fleet-wide; by one instance while an instance acted alone), every answer byte-identical to its execution's, no other violation (every run)", func() (bool, string, bool) {
		r := find("S10x", setupFleet)
		if r == nil {
			return absent("S10x", setupFleet)
		}
		ok, per := everyRun(r, func(run *result) (bool, string) {
			x := run.Extra
			return run.Duplicates == 0 && x["violations"] == 0 && x["mismatches"] == 0 && x["max_executions"] <= 1,
				fmt.Sprintf("seed %d: %d logical requests, %.0f requests with a key, %d keys executed twice, %.0f replays checked, %.0f mismatches, %.0f violations",
					run.Seed, run.Requests, x["sends"], run.Duplicates, x["replays_identical"], x["mismatches"], x["violations"])
		})
		return ok, per, true
	})
	add("S11", "resilient-hedge-p95 with 2% slow answers: p99 ≤ 30ms, p99.9 ≤ 100ms, extra upstream attempts ≤ 6% (median)", func() (bool, string, bool) {
		r := find("S11", setupResilientHedgeP95)
		if r == nil {
			return absent("S11", setupResilientHedgeP95)
		}
		ok := r.P99 <= 30 && r.P999 <= 100 && r.Extra["extra_attempts_pct"] <= 6
		return ok, tailDetail(find, "S11", setupResilientHedgeP95, setupResilientHedge50, setupResilient, setupCaddyHTTP), true
	})
	add("S11x", "resilient-hedge-p95 with 10% slow answers: extra upstream attempts within the retry budget's bound, 20% of requests + 10/s (every run)", func() (bool, string, bool) {
		r := find("S11x", setupResilientHedgeP95)
		if r == nil {
			return absent("S11x", setupResilientHedgeP95)
		}
		ok, per := everyRun(r, func(run *result) (bool, string) {
			x := run.Extra
			return x["extra_attempts_pct"] <= x["budget_bound_pct"], fmt.Sprintf("%.2f%% of %.1f%%", x["extra_attempts_pct"], x["budget_bound_pct"])
		})
		return ok, "per repetition: " + per + "; " +
			tailDetail(find, "S11x", setupResilientHedgeP95, setupResilientHedge50, setupResilient, setupCaddyHTTP), true
	})
	fallbackTargets(add, find, absent)
	return append(ts, shippingTargets(find, absent)...)
}

// checkTarget checks one goal: f reports whether it is met, the detail,
// and whether its rows ran at all (else the target is NOT YET, and the
// detail says why).
func checkTarget(id, goal string, f func() (bool, string, bool)) target {
	t := target{ID: id, Goal: goal, Status: "NOT YET"}
	ok, detail, ran := f()
	t.Detail = detail
	switch {
	case ran && ok:
		t.Status = "MET"
	case ran:
		t.Status = "NOT MET"
	}
	return t
}

// everyRun checks a target on each repetition of r: it is met when
// every one passes; the detail lists each one's value.
func everyRun(r *summary, check func(*result) (bool, string)) (bool, string) {
	ok := true
	per := make([]string, 0, len(r.Runs))
	for _, run := range r.Runs {
		pass, v := check(run)
		ok = ok && pass
		per = append(per, v)
	}
	return ok, strings.Join(per, ", ")
}

// peersS5h shows the other setups' success and duplicates in S5h, both
// rows.
func peersS5h(find func(row, setup string) *summary, setups ...string) string {
	var b strings.Builder
	for _, setup := range setups {
		k, n := find("S5h key", setup), find("S5h no key", setup)
		if k == nil || n == nil {
			continue
		}
		fmt.Fprintf(&b, "; %s: success %.2f%% key, %.2f%% no key, duplicates %d + %d in %d requests",
			setup, k.SuccessPct, n.SuccessPct, k.Duplicates, n.Duplicates, k.Requests+n.Requests)
	}
	return b.String()
}

// tailDetail shows the latency and extra attempts of S11's setups.
func tailDetail(find func(row, setup string) *summary, id string, setups ...string) string {
	var parts []string
	for _, setup := range setups {
		if r := find(id, setup); r != nil {
			parts = append(parts, fmt.Sprintf("%s p99 %sms, p99.9 %sms, extra attempts %.2f%%",
				setup, num(r.P99), num(r.P999), r.Extra["extra_attempts_pct"]))
		}
	}
	return strings.Join(parts, "; ")
}

// paired is the median over repetitions of a/b within each repetition:
// a shared machine's slow spells hit both runs of a repetition alike.
func paired(a, b *summary, f func(*result) float64) string {
	q, n := pairedRatio(a, b, f)
	if n == 0 {
		return "n/a"
	}
	return fmt.Sprintf("median %.3f× over %d", q, n)
}

// pairedRatio is the median of a/b within each repetition, and how many
// repetitions it is over.
func pairedRatio(a, b *summary, f func(*result) float64) (float64, int) {
	var qs []float64
	for _, x := range a.Runs {
		for _, y := range b.Runs {
			if x.Rep == y.Rep && f(y) > 0 {
				qs = append(qs, f(x)/f(y))
			}
		}
	}
	if len(qs) == 0 {
		return 0, 0
	}
	return medianOf(qs), len(qs)
}

func writeTargets(w io.Writer, ts []target) {
	for _, t := range ts {
		fmt.Fprintf(w, "- **%s**: %s: %s — %s\n", t.Status, t.ID, t.Goal, t.Detail)
	}
}

// machine describes where the numbers come from.
type machine struct {
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	Caddy   string `json:"caddy"`
	Nginx   string `json:"nginx"`
	HAProxy string `json:"haproxy"`
}

func describeMachine(e *env) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	m.Caddy = first(e.caddy, "version")
	m.Nginx, m.HAProxy = "not installed", "not installed"
	if e.nginx != "" {
		m.Nginx = first(e.nginx, "-v")
	}
	if e.haproxy != "" {
		m.HAProxy = first(e.haproxy, "-v")
	}
	return m
}

func writeMachine(w io.Writer, m machine) {
	fmt.Fprintf(w, "- CPUs (nproc): %d; CPU: %s\n- kernel: %s\n- Go: %s\n- Caddy: %s\n- nginx: %s\n- HAProxy: %s\n",
		m.CPUs, m.CPU, m.Kernel, m.Go, m.Caddy, m.Nginx, m.HAProxy)
}

// report is the JSON output.
type report struct {
	Command   string     `json:"command"`
	Started   string     `json:"started"`
	Seconds   float64    `json:"seconds"`
	Machine   machine    `json:"machine"`
	Skipped   []string   `json:"skipped,omitempty"`
	Failed    []string   `json:"failed,omitempty"`
	Scenarios []scDoc    `json:"scenarios"`
	Runs      []*result  `json:"runs"`
	Summary   []*summary `json:"summary"`
	Targets   []target   `json:"targets"`
}

type scDoc struct {
	ID     string `json:"id"`
	Title  string `json:"title"`
	Config string `json:"config"`
}

func writeJSON(path string, r *report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
