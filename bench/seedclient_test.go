package main

import (
	"testing"
	"time"
)

// What S12 counts: each operation's provider record against what the
// application was told.
func TestShippingAnalysis(t *testing.T) {
	ok := func(key string) shipArrival {
		return shipArrival{Method: "POST", Key: key, Executed: true, Status: 201}
	}
	busy := func(key string) shipArrival {
		return shipArrival{Method: "POST", Key: key, Fault: fault503, Status: 503}
	}
	cut := func(key string) shipArrival {
		return shipArrival{Method: "POST", Key: key, Fault: faultDrop, Executed: true, Cut: true}
	}
	recs := []opRecord{
		{Op: "o1", Method: "POST", Verdict: "ok", Status: 201, Tries: 1},
		{Op: "o2", Method: "POST", Verdict: "ok", Status: 201, Tries: 2},          // executed twice
		{Op: "o3", Method: "POST", Verdict: "unknown", Status: 502, Tries: 1},     // cut, told unknown: fine
		{Op: "o4", Method: "POST", Verdict: "unknown", Status: 504, Tries: 1},     // answered, yet told unknown
		{Op: "o5", Method: "POST", Verdict: "unavailable", Status: 502, Tries: 3}, // cut, told failed
		{Op: "o6", Method: "POST", Verdict: "unavailable", Status: 503, Tries: 3}, // never executed, failed
		{Op: "o7", Method: "GET", Verdict: "timeout", Status: 0, Tries: 3},
		{Op: "o8", Method: "POST", Verdict: "ok", Status: 201, Tries: 2},
		{Op: "o9", Method: "POST", Verdict: "bad_response", Status: 200, Tries: 1}, // a 2xx it could not use
	}
	ship := map[string][]shipArrival{
		"o1": {ok("k1")},
		"o2": {cut("k2"), ok("k2")},
		"o3": {busy("k3"), cut("k3")},
		"o4": {ok("k4")},
		"o5": {cut("k5")},
		"o6": {busy("k6"), busy("k6"), busy("k6")},
		"o7": {{Method: "GET", Fault: faultSlow}},
		"o8": {busy("k8a"), ok("k8b")},
		"o9": {ok("k9")},
	}
	r := &runData{sc: &scenario{ID: "S12-mixed", Shipping: &shippingSpec{}}, setup: setupLibraryGateway,
		ship: ship, ops: map[string]opRecord{}, measured: time.Second}
	for _, rec := range recs {
		r.samples = append(r.samples, rec.sample())
		r.ops[rec.Op] = rec
	}
	res := analyze(r)[0]
	if res.OK != 3 || res.Requests != 9 {
		t.Fatalf("%d of %d succeeded, want 3 of 9", res.OK, res.Requests)
	}
	want := map[string]float64{
		"posts":                       8,
		"executions_per_post":         8.0 / 8, // o2 twice, o6 never
		"posts_executed_twice":        1,
		"executed_told_failed":        2, // o5, o9
		"told_unknown":                2,
		"cut":                         3, // o2, o3, o5
		"failed_not_cut":              4, // o4, o6, o7, o9
		"executed_reported_otherwise": 3, // o4, o5, o9
		"ok_not_executed":             0,
		"posts_several_keys":          1,
	}
	for k, v := range want {
		if got := res.Extra[k]; got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if res.Duplicates != 1 || res.UpstreamRequests != 14 {
		t.Errorf("duplicates %d, provider requests %d; want 1, 14", res.Duplicates, res.UpstreamRequests)
	}
}
