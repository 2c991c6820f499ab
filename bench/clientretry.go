package main

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// S10: clients that give up on a slow answer and send the same POST
// again, same Idempotency-Key, same body. What counts is how many times
// the upstream takes each order, and whether the client gets an answer.

// resend is how such a client sends one logical request.
type resend struct {
	// Sends is how many times in all, the first included.
	Sends int
	// Timeout is the client's patience per send; the first send's counts
	// from its intended time (open loop).
	Timeout time.Duration
	// MaxWait caps the wait a 409's Retry-After asks for.
	MaxWait time.Duration
}

// run sends s until an answer comes: again at once when a send times out
// or fails; after the 409's Retry-After (at most MaxWait) on a 409; it
// stops at any other status, or after Sends sends. The latency counts
// from the intended time to the last answer, or to giving up.
func (r *resend) run(ctx context.Context, c *http.Client, s *sample, targets []string, start, intended time.Time) {
	from := s.sent(intended)
	began := from
	for n := 1; n <= r.Sends && ctx.Err() == nil; n++ {
		s.Sends = n
		s.Status, s.Replayed, s.Outcome, s.Attempts = 0, false, "", -1
		sctx, cancel := context.WithDeadline(ctx, began.Add(r.Timeout))
		res, err := send(c, newRequest(sctx, targets, s))
		cancel()
		if res != nil {
			s.setOutcome(res.Header)
		}
		if err != nil {
			began = time.Now() // timed out or failed: again at once
			continue
		}
		s.Status = res.StatusCode
		s.Replayed = res.Header.Get("Idempotent-Replayed") == "true"
		if res.StatusCode != http.StatusConflict {
			break
		}
		s.Conflicts++
		if n == r.Sends || !sleep(ctx, min(retryAfter(res.Header), r.MaxWait)) {
			break
		}
		began = time.Now()
	}
	s.done(start, from)
}

// retryAfter is the wait a Retry-After header asks for (seconds or an
// HTTP date); 0 when there is none or it is past.
func retryAfter(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(max(0, min(n, 1<<20))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t))
	}
	return 0
}

// sleep waits d, or less if ctx ends first; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// analyzeResend counts, per logical request, what the upstream took and
// what the client got (S10). An execution is an arrival whose body the
// upstream read to its end, answered or not; a logical request the
// upstream served is one with an arrival it answered 2xx.
func analyzeResend(r *runData, samples []*sample, res *result) {
	sends, conflicts, replays := 0, 0, 0
	executions, most, never, served, servedAnswered, answeredTwice := 0, 0, 0, 0, 0, 0
	for _, s := range samples {
		sends += s.Sends
		conflicts += s.Conflicts
		if s.ok() && s.Replayed {
			replays++
		}
		n, srv := 0, 0
		for _, a := range r.up.Arrivals[s.ID] {
			if a.Executed {
				n++
			}
			if a.Status >= 200 && a.Status < 300 {
				srv++
			}
		}
		executions += n
		most = max(most, n)
		if n == 0 {
			never++
		}
		if srv > 0 {
			served++
			if s.ok() {
				servedAnswered++
			}
		}
		if srv > 1 {
			answeredTwice++
		}
	}
	x := res.Extra
	if len(samples) > 0 {
		x["executions_per_request"] = float64(executions) / float64(len(samples))
		x["sends_per_request"] = float64(sends) / float64(len(samples))
	}
	x["max_executions"] = float64(most)
	x["never_executed"] = float64(never)
	x["served"] = float64(served)
	x["served_answered"] = float64(servedAnswered)
	x["served_twice"] = float64(answeredTwice)
	x["served_answered_pct"] = 100
	if served > 0 {
		x["served_answered_pct"] = 100 * float64(servedAnswered) / float64(served)
	}
	x["conflicts"] = float64(conflicts)
	x["replays"] = float64(replays)
}
