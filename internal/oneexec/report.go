package oneexec

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Report is what a run did and what the check found.
type Report struct {
	Seed     uint64        `json:"seed"`
	Load     time.Duration `json:"load_ns"`     // how long the clients sent
	Gateways int           `json:"gateways"`    // instances
	Logical  int           `json:"logical"`     // logical requests, sweep excluded
	Answered int           `json:"answered"`    // of those, ended with the upstream's answer (first or replay)
	Sends    int           `json:"sends"`       // HTTP requests with a key, sweep included
	Keys     int           `json:"keys"`        // distinct keys (per scope)
	Latency  LatencyStats  `json:"latency_ms"`  // of the logical requests, first send to last answer
	Sweep    int           `json:"sweep_sends"` // the final sweep's requests, one per logical request

	Executions   int `json:"executions"`    // keyed POSTs that reached the upstream
	Acting       int `json:"acting"`        // of those, the ones that may have acted
	KeysExecuted int `json:"keys_executed"` // keys with an execution that may have acted
	// MaxActing is the most executions that may have acted for one key,
	// over the keys checked fleet-wide (1 when the guarantee holds).
	MaxActing int `json:"max_acting"`
	// KeysTwice counts the keys executed more than once (fleet-wide, or
	// by one instance for an exempt key): must be 0.
	KeysTwice int `json:"keys_twice"`
	// ExemptKeys were under way while an instance acted alone: checked
	// per instance; ExemptExecutedAgain of them were executed by two
	// instances, as the README allows; MaxActingPerInstance is the most
	// by one instance.
	ExemptKeys           int `json:"exempt_keys"`
	ExemptExecutedAgain  int `json:"exempt_executed_again"`
	MaxActingPerInstance int `json:"max_acting_per_instance"`

	FirstsIdentical      int `json:"firsts_identical"`       // first answers, byte-identical to their execution's
	ReplaysIdentical     int `json:"replays_identical"`      // replays, byte-identical to the execution's answer
	ReplaysCrossInstance int `json:"replays_cross_instance"` // of those, from another instance's execution
	ReplaysOfCarried     int `json:"replays_of_carried"`     // of those, of an answer its own client never got
	SweepReplays         int `json:"sweep_replays"`          // of those, to the final sweep
	ReplaysOwnInWindow   int `json:"replays_own_in_window"`  // of those, of the instance's own execution while an instance acted alone
	Mismatches           int `json:"mismatches"`             // answers that differ from their execution's: must be 0

	InFlight409     int            `json:"in_flight_409"`     // 409 with Retry-After
	Used409         int            `json:"used_409"`          // 409 without: the answer was not kept
	Mismatch422     int            `json:"mismatch_422"`      // the key with another body
	NoAnswerReplays int            `json:"no_answer_replays"` // replayed 502/504: the upstream never answered
	MaybeFirsts     int            `json:"maybe_firsts"`      // 502/504 executed maybe
	Refused         int            `json:"refused"`           // executed no: refusals, released keys' passed-on 503/429
	ClientErrors    int            `json:"client_errors"`     // no answer within the client's patience, or cut
	CutAnswers      int            `json:"cut_answers"`       // of those, the upstream's answer cut short
	Outcomes        map[string]int `json:"outcomes"`

	Probes     int `json:"probes"`      // GETs of the hedge probe
	HedgedGets int `json:"hedged_gets"` // of those, hedged by the gateway: its hedge block is live

	// Windows are those in which an instance acted alone, as the check
	// used them: widened by the run's Grace on each side.
	Windows    []Window                      `json:"windows"`
	Events     []EventRecord                 `json:"events"`
	Gauges     map[string]map[string]float64 `json:"gauges"` // per gateway, at the end
	Violations []Violation                   `json:"violations"`
}

// LatencyStats summarises latencies in milliseconds.
type LatencyStats struct {
	P50, P99, P999, Max float64
}

// EventRecord is when an event ran, and how it went.
type EventRecord struct {
	Name       string
	Start, End time.Time
	Err        string
}

// OK reports whether every invariant held.
func (r *Report) OK() bool { return len(r.Violations) == 0 }

// ViolationsByKind counts the violations of each kind.
func (r *Report) ViolationsByKind() map[string]int {
	m := map[string]int{}
	for _, v := range r.Violations {
		m[v.Kind]++
	}
	return m
}

// Summary is a few lines on what the run exercised and found.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %s of load through %d gateways: %d logical requests (%d ended with the upstream's answer; p50 %.0fms, p99 %.0fms), %d keys, %d requests with a key (%d of them the final sweep's)\n",
		r.Seed, r.Load.Round(time.Millisecond), r.Gateways, r.Logical, r.Answered, r.Latency.P50, r.Latency.P99, r.Keys, r.Sends, r.Sweep)
	fmt.Fprintf(&b, "upstream: %d executions, %d may have acted, for %d keys; at most %d per key checked fleet-wide; keys executed twice: %d\n",
		r.Executions, r.Acting, r.KeysExecuted, r.MaxActing, r.KeysTwice)
	fmt.Fprintf(&b, "exempt (under way while an instance acted alone): %d keys, %d of them executed by two instances, at most %d by one\n",
		r.ExemptKeys, r.ExemptExecutedAgain, r.MaxActingPerInstance)
	fmt.Fprintf(&b, "answers byte-identical to their execution's: %d first, %d replays (%d from another instance, %d of answers their own client never got, %d in the sweep, %d of the instance's own while one acted alone); mismatches: %d\n",
		r.FirstsIdentical, r.ReplaysIdentical, r.ReplaysCrossInstance, r.ReplaysOfCarried, r.SweepReplays, r.ReplaysOwnInWindow, r.Mismatches)
	fmt.Fprintf(&b, "gateway's own: %d 409 in flight, %d 409 used, %d 422, %d replayed no-answer, %d 502/504 maybe, %d executed no; %d client errors (%d cut answers); hedge probe: %d of %d GETs hedged\n",
		r.InFlight409, r.Used409, r.Mismatch422, r.NoAnswerReplays, r.MaybeFirsts, r.Refused, r.ClientErrors, r.CutAnswers, r.HedgedGets, r.Probes)
	var outs []string
	for _, k := range slices.Sorted(maps.Keys(r.Outcomes)) {
		outs = append(outs, fmt.Sprintf("%s %d", k, r.Outcomes[k]))
	}
	fmt.Fprintf(&b, "outcomes: %s\n", strings.Join(outs, ", "))
	for _, e := range r.Events {
		fmt.Fprintf(&b, "event %q at %s, %s", e.Name, e.Start.Format("15:04:05.000"), e.End.Sub(e.Start).Round(time.Millisecond))
		if e.Err != "" {
			fmt.Fprintf(&b, ", error %s", e.Err)
		}
		b.WriteString("\n")
	}
	for _, w := range r.Windows {
		fmt.Fprintf(&b, "an instance acted alone from %s to %s: %s\n", w.From.Format("15:04:05.000"), w.To.Format("15:04:05.000"), w.Why)
	}
	for _, g := range slices.Sorted(maps.Keys(r.Gauges)) {
		fmt.Fprintf(&b, "gateway %s at the end:", g)
		for _, k := range slices.Sorted(maps.Keys(r.Gauges[g])) {
			fmt.Fprintf(&b, " %s %.0f", k, r.Gauges[g][k])
		}
		b.WriteString("\n")
	}
	if n := len(r.Violations); n > 0 {
		fmt.Fprintf(&b, "%d violations: %v\n", n, r.ViolationsByKind())
	}
	return b.String()
}
