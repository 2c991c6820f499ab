package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// What S12's runs show: per operation, what the provider did (shipping.go)
// against what the application was told (drive.py's verdict), and the
// targets the gateway and the client library are held to.

// analyzeShipping counts, over the operations of a row, what the
// provider did against what the application was told.
func analyzeShipping(r *runData, samples []*sample, res *result) {
	x := res.Extra
	var upstream, tries, posts, executions, twice, extra int
	var toldFailed, unknown, unknownNotExecuted, cut, failedNotCut, reportedOtherwise, okNotExecuted, severalKeys int
	lastAnswers := map[string]int{} // the gateway's outcome of a failed operation's last answer
	// failures by when the operation was due, around the outage: a try
	// up to 2 s before it can still be retrying into it
	var failedDuring, failedAfter int
	outage := r.sc.Outage[1] > 0
	for _, s := range samples {
		as := r.ship[s.ID]
		upstream += len(as)
		tries += s.Sends
		n, wasCut := 0, false
		keys := map[string]bool{}
		for _, a := range as {
			if a.Executed {
				n++
			}
			wasCut = wasCut || a.Cut
			if a.Key != "" {
				keys[a.Key] = true
			}
		}
		post := s.Class == classPostKey
		if !s.ok() {
			if !post || !wasCut {
				failedNotCut++
			}
			switch {
			case !outage:
			case s.Intended >= r.sc.Outage[1]:
				failedAfter++
			case s.Intended >= r.sc.Outage[0]-2*time.Second:
				failedDuring++
			}
			if o := r.ops[s.ID].Outcome; o != "" {
				lastAnswers[o]++
			}
		}
		if !post {
			continue
		}
		told := s.Outcome
		failed := !s.ok() && told != "unknown"
		posts++
		executions += n
		extra += max(0, n-1)
		if n >= 2 {
			twice++
		}
		if wasCut {
			cut++
		}
		if n > 0 && failed {
			toldFailed++
		}
		if told == "unknown" {
			unknown++
			if n == 0 {
				unknownNotExecuted++
			}
		}
		if n > 0 && !s.ok() && (told != "unknown" || !wasCut) {
			reportedOtherwise++
		}
		if s.ok() && n == 0 {
			okNotExecuted++
		}
		if len(keys) > 1 {
			severalKeys++
		}
	}
	x["max_in_flight"] = float64(maxInFlight(samples))
	res.UpstreamRequests = upstream
	res.Amplification = 0
	if len(samples) > 0 {
		res.Amplification = float64(upstream) / float64(len(samples))
		x["tries_per_op"] = float64(tries) / float64(len(samples))
	}
	res.Duplicates = extra
	if posts > 0 {
		x["executions_per_post"] = float64(executions) / float64(posts)
	}
	x["posts"] = float64(posts)
	x["posts_executed_twice"] = float64(twice)
	x["executed_told_failed"] = float64(toldFailed)
	x["told_unknown"] = float64(unknown)
	x["unknown_not_executed"] = float64(unknownNotExecuted)
	x["cut"] = float64(cut)
	x["failed_not_cut"] = float64(failedNotCut)
	x["executed_reported_otherwise"] = float64(reportedOtherwise)
	x["ok_not_executed"] = float64(okNotExecuted)
	x["posts_several_keys"] = float64(severalKeys)
	if outage {
		x["failed_outage"] = float64(failedDuring)
		x["failed_after_outage"] = float64(failedAfter)
	}
	for o, n := range lastAnswers {
		x["last_answer_"+o] = float64(n)
	}
}

// maxInFlight is the most operations under way at once: an operation
// runs from its intended start to what its application is told.
func maxInFlight(samples []*sample) int {
	type edge struct {
		at    time.Duration
		delta int
	}
	edges := make([]edge, 0, 2*len(samples))
	for _, s := range samples {
		edges = append(edges, edge{s.Intended, 1}, edge{s.Done, -1})
	}
	// ends before starts at the same instant
	slices.SortFunc(edges, func(a, b edge) int {
		if a.at != b.at {
			return int(a.at - b.at)
		}
		return a.delta - b.delta
	})
	n, most := 0, 0
	for _, e := range edges {
		n += e.delta
		most = max(most, n)
	}
	return most
}

// shippingNote is the notes column of an S12 row (medians over the
// repetitions).
func shippingNote(s *summary) string {
	x := s.Extra
	parts := []string{fmt.Sprintf("executions/POST %.3f; POSTs executed twice %.0f; executed but told failed %.0f; "+
		"told unknown %.0f; cut by the provider %.0f; failed, not a cut POST %.0f; tries/op %.2f; at most %.0f operations under way",
		x["executions_per_post"], x["posts_executed_twice"], x["executed_told_failed"],
		x["told_unknown"], x["cut"], x["failed_not_cut"], x["tries_per_op"], x["max_in_flight"])}
	if _, ok := x["failed_outage"]; ok {
		parts = append(parts, fmt.Sprintf("failures due from 2 s before the outage to its end %.0f, due after it %.0f",
			x["failed_outage"], x["failed_after_outage"]))
	}
	if v := x["ok_not_executed"]; v > 0 {
		parts = append(parts, fmt.Sprintf("told created, never executed %.0f", v))
	}
	if v := x["unknown_not_executed"]; v > 0 {
		parts = append(parts, fmt.Sprintf("told unknown, never executed %.0f", v))
	}
	if v := x["posts_several_keys"]; v > 0 {
		parts = append(parts, fmt.Sprintf("POSTs that reached the provider with more than one key %.0f", v))
	}
	var last []string
	for _, k := range slices.Sorted(maps.Keys(x)) {
		if o, ok := strings.CutPrefix(k, "last_answer_"); ok && x[k] > 0 {
			last = append(last, fmt.Sprintf("%s %.0f", o, x[k]))
		}
	}
	if len(last) > 0 {
		parts = append(parts, "the gateway's outcome of a failure's last answer: "+strings.Join(last, ", "))
	}
	return strings.Join(parts, "; ")
}

// shippingIDs are S12's scenarios, in table order.
var shippingIDs = []string{"S12-mixed", "S12-503", "S12-slow", "S12-outage"}

// shippingTargets checks S12's goals. find looks a row up; absent says
// why a scenario's setups have no row.
func shippingTargets(find func(row, setup string) *summary, absent func(id string, setups ...string) (bool, string, bool)) []target {
	var ts []target
	gateways := []string{setupSeedGateway, setupThinGateway, setupLibraryGateway}
	ts = append(ts, checkTarget("S12 once", "every gateway row: 0 POSTs executed twice (every run, every S12 scenario)", func() (bool, string, bool) {
		ok, ran := true, false
		var parts []string
		for _, id := range shippingIDs {
			for _, setup := range append([]string{setupSeedDirect}, gateways...) {
				r := find(id, setup)
				if r == nil {
					continue
				}
				worst := 0.0
				for _, run := range r.Runs {
					worst = max(worst, run.Extra["posts_executed_twice"])
				}
				if setup != setupSeedDirect {
					ran = true
					ok = ok && worst == 0
				}
				parts = append(parts, fmt.Sprintf("%s %s %.0f", id, setup, worst))
			}
		}
		if !ran {
			return absent("S12-mixed", gateways...)
		}
		return ok, "POSTs executed twice, worst run (seed-direct for comparison): " + strings.Join(parts, ", "), true
	}))
	ts = append(ts, checkTarget("S12 seed", "seed-gateway (the seed's client unchanged, through the example's site), mixed, 503 and slow: "+
		"every operation succeeds except POSTs the provider executed and then cut off (every run)", func() (bool, string, bool) {
		ok, ran := true, false
		var parts []string
		for _, id := range shippingIDs[:3] {
			r := find(id, setupSeedGateway)
			if r == nil {
				continue
			}
			ran = true
			pass, per := everyRun(r, func(run *result) (bool, string) {
				return run.Extra["failed_not_cut"] == 0, fmt.Sprintf("%.1f%% with %.0f other failures", run.SuccessPct, run.Extra["failed_not_cut"])
			})
			ok = ok && pass
			parts = append(parts, id+": "+per)
		}
		if !ran {
			return absent("S12-mixed", setupSeedGateway)
		}
		return ok, "success per repetition: " + strings.Join(parts, "; "), true
	}))
	ts = append(ts, checkTarget("S12 slow", "seed-gateway, slow answers: 100% success and 0 POSTs executed but reported failed (every run)", func() (bool, string, bool) {
		r := find("S12-slow", setupSeedGateway)
		if r == nil {
			return absent("S12-slow", setupSeedGateway)
		}
		ok, per := everyRun(r, func(run *result) (bool, string) {
			f := run.Extra["executed_told_failed"]
			return run.SuccessPct == 100 && f == 0, fmt.Sprintf("%.1f%%, %.0f executed but told failed", run.SuccessPct, f)
		})
		detail := "per repetition: " + per
		if d := find("S12-slow", setupSeedDirect); d != nil {
			detail += fmt.Sprintf("; seed-direct %.1f%% with %d extra executions (worst run)", d.SuccessPct, d.Duplicates)
		}
		return ok, detail, true
	}))
	ts = append(ts, checkTarget("S12 thin", "thin-gateway (one try), 20% 503: success ≥ 99% (every run)", func() (bool, string, bool) {
		r := find("S12-503", setupThinGateway)
		if r == nil {
			return absent("S12-503", setupThinGateway)
		}
		ok, per := everyRun(r, func(run *result) (bool, string) {
			return run.SuccessPct >= 99, fmt.Sprintf("%.1f%%", run.SuccessPct)
		})
		return ok, "per repetition: " + per, true
	}))
	ts = append(ts, checkTarget("S12 library", "library-gateway: every POST the provider executed reported as success, or as unknown where "+
		"the provider cut it off; none reported failed (every run, every S12 scenario)", func() (bool, string, bool) {
		ok, ran := true, false
		var parts []string
		for _, id := range shippingIDs {
			r := find(id, setupLibraryGateway)
			if r == nil {
				continue
			}
			ran = true
			pass, per := everyRun(r, func(run *result) (bool, string) {
				x := run.Extra
				return x["executed_reported_otherwise"] == 0, fmt.Sprintf("%.0f otherwise (%.0f told failed, %.0f unknown of %.0f cut)",
					x["executed_reported_otherwise"], x["executed_told_failed"], x["told_unknown"], x["cut"])
			})
			ok = ok && pass
			parts = append(parts, id+": "+per)
		}
		if !ran {
			return absent("S12-mixed", setupLibraryGateway)
		}
		return ok, "executed POSTs per repetition: " + strings.Join(parts, "; "), true
	}))
	ts = append(ts, checkTarget("S12 outage", "4 s outage: seed-gateway success ≥ seed-direct's (medians)", func() (bool, string, bool) {
		g, d := find("S12-outage", setupSeedGateway), find("S12-outage", setupSeedDirect)
		if g == nil || d == nil {
			return absent("S12-outage", setupSeedGateway, setupSeedDirect)
		}
		pct := func(r *result) string { return fmt.Sprintf("%.1f%%", r.SuccessPct) }
		return g.SuccessPct >= d.SuccessPct, fmt.Sprintf("gateway %.1f%%, direct %.1f%% (per repetition: gateway %s; direct %s)",
			g.SuccessPct, d.SuccessPct, perRun(g, pct), perRun(d, pct)), true
	}))
	return ts
}
