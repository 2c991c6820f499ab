package oneexec

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// The invariants, checked once the run is over, from what the upstream
// recorded of every execution and what every client request got.
//
// Per key (Authorization and key: the gateway's scope on one host):
//
//   - at most one execution that may have acted: every execution counts
//     but one whose 408, 425, 429 or 503 went out (the upstream said it
//     did nothing). A key is held to one per instance instead when one
//     of its executions (until grace after its end, while its answer
//     goes into the records), or the client request that execution came
//     from, was under way in a Window: the instance may have claimed the
//     key, or kept or released it, on its own;
//   - every answer of the upstream that a client got (its X-Exec names
//     the execution) is byte for byte that execution's: status, the
//     headers it set, body; the execution is of the same key and the
//     same request body; a first answer comes from the client request's
//     own execution, a replay (Idempotent-Replayed) from another's that
//     acted and whose answer could be kept;
//   - the gateway's own answers are ones it could give: 409 without
//     Retry-After only when the key's execution answered past
//     max_response or was cut; 422 only when the key executed with
//     another body; a replayed 502/504 only when the key's execution
//     gave no answer; executed "no" only when nothing of that client
//     request acted;
//   - one client request's executions never overlap (a keyed POST is
//     never hedged) and none follows one that may have acted (never
//     retried after that).

// Window is a stretch of time during which some instance acted alone
// (its Redis did not answer): cross-instance deduplication pauses, as
// the README says.
type Window struct {
	From, To time.Time
	Why      string
}

// Violation kinds.
const (
	vTwice      = "executed twice"
	vDiffers    = "answer differs"
	vForeign    = "answer of another request"
	vReplay     = "impossible replay"
	vGateway    = "impossible gateway answer"
	vHedged     = "keyed request hedged or retried after acting"
	vNoExec     = "answer names no execution"
	vUnexpected = "unexpected answer"
)

// Violation is one broken invariant.
type Violation struct {
	Kind   string
	Key    string
	Detail string
}

// String is the violation as the test's failure shows it.
func (v Violation) String() string { return v.Kind + ": key " + v.Key + ": " + v.Detail }

// checkInput is what the check reads.
type checkInput struct {
	execs       []Execution
	sends       []*Send
	probes      []*Send
	arrivals    map[string][]Arrival
	windows     []Window
	grace       time.Duration // after an execution's end, while its answer is kept
	maxResponse int
}

// check verifies the invariants and counts what the run exercised.
func check(in checkInput) *Report {
	rep := &Report{Outcomes: map[string]int{}, Windows: in.windows}
	byN := make(map[int64]*Execution, len(in.execs))
	byKey := map[string][]*Execution{}
	bySend := map[string][]*Execution{}
	for i := range in.execs {
		e := &in.execs[i]
		byN[e.N] = e
		byKey[e.Key] = append(byKey[e.Key], e)
		bySend[e.Send] = append(bySend[e.Send], e)
		rep.Executions++
		if e.Acting {
			rep.Acting++
		}
	}
	sendsByKey := map[string][]*Send{}
	sendByID := map[string]*Send{}
	for _, s := range in.sends {
		sendsByKey[s.Key] = append(sendsByKey[s.Key], s)
		sendByID[s.ID] = s
	}
	rep.Sends = len(in.sends)
	rep.Keys = len(sendsByKey)
	// the body an execution was sent with: what the upstream read, or,
	// when its body came apart (its gateway gave up mid-body), its
	// client request's, which the gateway fingerprinted
	bodyOf := func(e *Execution) [32]byte {
		if s := sendByID[e.Send]; s != nil && e.BodyErr != "" {
			return s.Body
		}
		return e.Body
	}

	overlaps := func(from, to time.Time) bool {
		for _, w := range in.windows {
			if !from.After(w.To) && !to.Before(w.From) {
				return true
			}
		}
		return false
	}
	// a key is held to one acting execution per instance when one of its
	// executions, or the client request it came from (which may have
	// claimed the key on its instance alone), was under way in a window
	exempt := map[string]bool{}
	for key, es := range byKey {
		for _, e := range es {
			ex := overlaps(e.Start, e.End.Add(in.grace))
			if s := sendByID[e.Send]; s != nil {
				ex = ex || overlaps(s.Start, s.End)
			}
			exempt[key] = exempt[key] || ex
		}
		if exempt[key] {
			rep.ExemptKeys++
		}
	}

	fail := func(kind, key, format string, args ...any) {
		detail := fmt.Sprintf(format, args...)
		if kind != vTwice {
			// what every request with the key got, for the reproduction
			for _, s := range sendsByKey[key] {
				detail += "\n\t\trequest " + s.ID + " " + describeSend(s)
			}
		}
		rep.Violations = append(rep.Violations, Violation{Kind: kind, Key: key, Detail: detail})
	}

	// executions per key
	for key, es := range byKey {
		var acting []*Execution
		perGateway := map[string]int{}
		for _, e := range es {
			if e.Acting {
				acting = append(acting, e)
				perGateway[e.Gateway]++
			}
		}
		if len(acting) > 0 {
			rep.KeysExecuted++
		}
		if !exempt[key] {
			rep.MaxActing = max(rep.MaxActing, len(acting))
			if len(acting) > 1 {
				rep.KeysTwice++
				fail(vTwice, key, "%d executions may have acted: %s", len(acting), describeExecs(acting))
			}
			continue
		}
		for g, n := range perGateway {
			rep.MaxActingPerInstance = max(rep.MaxActingPerInstance, n)
			if n > 1 {
				rep.KeysTwice++
				fail(vTwice, key, "%d executions sent by %s may have acted, while an instance acted alone: %s", n, g, describeExecs(acting))
			}
		}
		if len(acting) > 1 {
			rep.ExemptExecutedAgain++
		}
	}

	// one client request's executions
	for id, es := range bySend {
		s := sendByID[id]
		if s == nil {
			continue // the hedge probe's, or not a client's
		}
		slices.SortFunc(es, func(a, b *Execution) int { return a.Start.Compare(b.Start) })
		for i := 1; i < len(es); i++ {
			// the gateway may send again once it has the status (a
			// 503, say), before the upstream ended the answer's body
			prev := es[i-1].End
			if !es[i-1].Told.IsZero() {
				prev = es[i-1].Told
			}
			if es[i].Start.Before(prev) {
				fail(vHedged, s.Key, "request %s reached the upstream twice at once: %s", id, describeExecs(es))
				break
			}
			if es[i-1].Acting {
				fail(vHedged, s.Key, "request %s was sent again after an execution that may have acted: %s", id, describeExecs(es))
				break
			}
		}
	}

	// every answer
	for _, s := range in.sends {
		exec := s.Header.Get(HeaderExec)
		if !s.answered() {
			rep.ClientErrors++
			if exec != "" {
				rep.CutAnswers++ // the upstream's answer, cut on purpose (Cut) or by the client's patience
			}
			continue
		}
		outcome, executed := s.Header.Get(HeaderOutcome), s.Header.Get(HeaderExecuted)
		replayed := s.Header.Get("Idempotent-Replayed") == "true"
		rep.Outcomes[outcome]++
		if executed == "no" && slices.ContainsFunc(bySend[s.ID], func(e *Execution) bool { return e.Acting }) {
			fail(vGateway, s.Key, "request %s got %d %s, executed no, but an execution of it may have acted: %s", s.ID, s.Status, outcome, describeExecs(bySend[s.ID]))
			continue
		}
		if exec != "" {
			n, _ := strconv.ParseInt(exec, 10, 64)
			e := byN[n]
			if e == nil {
				fail(vNoExec, s.Key, "request %s got an answer of execution %q, which the upstream never ran: %s", s.ID, exec, describeSend(s))
				continue
			}
			if e.Key != s.Key || e.Body != s.Body {
				fail(vForeign, s.Key, "request %s (%s) got the answer of execution %d of key %s with a body of %d bytes (its own: %d bytes, same: %v)",
					s.ID, describeSend(s), e.N, e.Key, e.BodyLen, s.BodyLen, e.Body == s.Body)
				continue
			}
			if d := differs(s, e); d != "" {
				rep.Mismatches++
				fail(vDiffers, s.Key, "request %s (%s), answered from execution %d: %s", s.ID, describeSend(s), e.N, d)
				continue
			}
			if !replayed {
				switch {
				case e.Send != s.ID:
					fail(vReplay, s.Key, "request %s got execution %d's answer (sent for %s) without Idempotent-Replayed: %s", s.ID, e.N, e.Send, describeSend(s))
				case (executed == "no") != releasing(e.Status):
					fail(vGateway, s.Key, "request %s got the upstream's %d with executed %q", s.ID, e.Status, executed)
				default:
					rep.FirstsIdentical++
				}
				continue
			}
			switch {
			case !e.Acting:
				fail(vReplay, s.Key, "request %s got a replay of execution %d, whose %d said the upstream did nothing", s.ID, e.N, e.Status)
			case e.Send == s.ID:
				fail(vReplay, s.Key, "request %s got its own execution %d's answer as a replay", s.ID, e.N)
			case !keepable(e, in.maxResponse):
				fail(vReplay, s.Key, "request %s got a replay of execution %d, whose answer (%d bytes, delivered %v) could not be kept", s.ID, e.N, e.AnswerLen, e.Delivered)
			case executed != "yes":
				fail(vGateway, s.Key, "request %s got a replay of execution %d's %d with executed %q, want yes", s.ID, e.N, e.Status, executed)
			default:
				rep.ReplaysIdentical++
				if e.Gateway != s.Gateway {
					rep.ReplaysCrossInstance++
				}
				if first := sendByID[e.Send]; first != nil && (!first.answered() || first.Header.Get(HeaderExec) == "") {
					rep.ReplaysOfCarried++ // its own client got a 504 or gave up
				}
				if s.Sweep {
					rep.SweepReplays++
				}
				if e.Gateway == s.Gateway && overlaps(s.Start, s.End) {
					rep.ReplaysOwnInWindow++ // from the instance's own records, Redis or not
				}
			}
			continue
		}
		// the gateway's own answers
		sameBody := func(e *Execution) bool { return e.Acting && bodyOf(e) == s.Body }
		switch {
		case s.Status == http.StatusConflict && s.Header.Get("Retry-After") != "":
			rep.InFlight409++
			if executed != "no" {
				fail(vGateway, s.Key, "request %s: 409 with Retry-After says executed %q, want no", s.ID, executed)
			}
		case s.Status == http.StatusConflict:
			rep.Used409++
			if !slices.ContainsFunc(byKey[s.Key], func(e *Execution) bool {
				return sameBody(e) && e.Status != 0 && (e.AnswerLen > in.maxResponse || e.Fault == Cut)
			}) {
				fail(vGateway, s.Key, "request %s got 409 (used, answer not kept), but no execution of its key answered past max_response or was cut: %s; %s",
					s.ID, describeSend(s), describeExecs(byKey[s.Key]))
			}
		case s.Status == http.StatusUnprocessableEntity && outcome == "key_mismatch":
			rep.Mismatch422++
			if !slices.ContainsFunc(byKey[s.Key], func(e *Execution) bool { return e.Acting && bodyOf(e) != s.Body }) {
				fail(vGateway, s.Key, "request %s got 422, but its key never executed with another body: %s", s.ID, describeExecs(byKey[s.Key]))
			}
		case replayed && (s.Status == http.StatusBadGateway || s.Status == http.StatusGatewayTimeout):
			rep.NoAnswerReplays++
			if !slices.ContainsFunc(byKey[s.Key], func(e *Execution) bool { return sameBody(e) && (e.Status == 0 || !e.Delivered) }) {
				fail(vGateway, s.Key, "request %s got a replayed %d (no answer), but every execution of its key answered: %s", s.ID, s.Status, describeExecs(byKey[s.Key]))
			}
		case executed == "maybe" && (s.Status == http.StatusBadGateway || s.Status == http.StatusGatewayTimeout):
			rep.MaybeFirsts++
		case executed == "no" && s.Status >= 429:
			rep.Refused++
		default:
			fail(vUnexpected, s.Key, "request %s: %s", s.ID, describeSend(s))
		}
	}

	// the hedge probe: the block is live
	for _, p := range in.probes {
		if len(in.arrivals[p.ID]) > 1 {
			rep.HedgedGets++
		}
	}
	rep.Probes = len(in.probes)
	return rep
}

// keepable reports whether the gateway could keep e's answer whole for
// its repeats: delivered, not cut, within max_response.
func keepable(e *Execution, maxResponse int) bool {
	return e.Status != 0 && e.Delivered && e.Fault != Cut && e.AnswerLen <= maxResponse
}

// differs says how s's answer differs from execution e's, "" when it is
// the same: status, every header e set (and no header of the upstream's
// that e did not set), body.
func differs(s *Send, e *Execution) string {
	if s.Status != e.Status {
		return fmt.Sprintf("status %d, the execution's %d", s.Status, e.Status)
	}
	for name, want := range e.Header {
		if got := s.Header.Values(name); !slices.Equal(got, want) {
			return fmt.Sprintf("header %s %q, the execution's %q", name, got, want)
		}
	}
	for _, name := range upstreamHeaders {
		if _, set := e.Header[name]; !set && len(s.Header.Values(name)) > 0 {
			return fmt.Sprintf("header %s %q, which the execution did not set", name, s.Header.Values(name))
		}
	}
	if s.AnswerLen != e.AnswerLen || s.Answer != e.Answer {
		return fmt.Sprintf("body of %d bytes (sha256 %x), the execution's %d bytes (sha256 %x)", s.AnswerLen, s.Answer[:6], e.AnswerLen, e.Answer[:6])
	}
	return ""
}

// upstreamHeaders are the headers only the upstream sets.
var upstreamHeaders = []string{HeaderExec, "X-Nonce", "X-Up-List", "Set-Cookie"}

func describeExecs(es []*Execution) string {
	s := ""
	for i, e := range es {
		if i > 0 {
			s += "; "
		}
		s += fmt.Sprintf("#%d by %s for %s (%s, body %d bytes %x%s, %s to %s, status %d, answer %d bytes, delivered %v, acting %v)",
			e.N, e.Gateway, e.Send, e.Plan, e.BodyLen, e.Body[:4], bodyErr(e), e.Start.Format("15:04:05.000"), e.End.Format("15:04:05.000"),
			e.Status, e.AnswerLen, e.Delivered, e.Acting)
	}
	if s == "" {
		return "no executions"
	}
	return s
}

func bodyErr(e *Execution) string {
	if e.BodyErr == "" {
		return ""
	}
	return ", read failed: " + e.BodyErr
}

func describeSend(s *Send) string {
	return fmt.Sprintf("to %s at %s to %s, body %d bytes %x, deadline %s, patience %s: %d outcome %q executed %q idempotency %q replayed %q exec %q retry-after %q, %d bytes; error %q",
		s.Gateway, s.Start.Format("15:04:05.000"), s.End.Format("15:04:05.000"), s.BodyLen, s.Body[:4], s.Deadline, s.Patience, s.Status,
		s.Header.Get(HeaderOutcome), s.Header.Get(HeaderExecuted), s.Header.Get(HeaderIdem), s.Header.Get("Idempotent-Replayed"),
		s.Header.Get(HeaderExec), s.Header.Get("Retry-After"), s.AnswerLen, s.Err)
}
