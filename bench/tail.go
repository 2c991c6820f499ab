package main

// S11: an upstream with a tail of slow answers, and hedged requests
// against it. The upstream cannot tell a hedge from the first copy; it
// counts arrivals per request id, which is enough: every arrival past
// the first is an extra attempt, hedge or retry.

// analyzeTail reports the extra upstream attempts, as a share of the
// client's requests, next to the bound the default retry budget puts
// on them (hedges pass it like retries: 20% of requests plus 10 per
// second), and how many arrivals ended before their answer: canceled
// hedges' losers, which free the upstream at once.
func analyzeTail(r *runData, res *result) {
	if res.Requests == 0 {
		return
	}
	x := res.Extra
	x["extra_attempts_pct"] = 100 * (float64(res.UpstreamRequests)/float64(res.Requests) - 1)
	x["budget_bound_pct"] = 100 * (0.2*float64(res.Requests) + 10*r.measured.Seconds()) / float64(res.Requests)
	ids := make(map[string]bool, len(r.samples))
	for i := range r.samples {
		ids[r.samples[i].ID] = true
	}
	canceled, most := 0, 0
	for id, as := range r.up.Arrivals {
		if !ids[id] {
			continue
		}
		most = max(most, len(as))
		for _, a := range as {
			if a.Status == 0 {
				canceled++
			}
		}
	}
	x["canceled_arrivals"] = float64(canceled)
	x["max_arrivals"] = float64(most)
}
