package main

import (
	"context"
	"path/filepath"
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
	if m := maxInFlight([]*sample{{Intended: 0, Done: 10}, {Intended: 5, Done: 6}, {Intended: 6, Done: 7}, {Intended: 10, Done: 11}}); m != 2 {
		t.Errorf("at most %d operations under way, want 2 (one ending as another starts is not two)", m)
	}
	if res.Duplicates != 1 || res.UpstreamRequests != 14 {
		t.Errorf("duplicates %d, provider requests %d; want 1, 14", res.Duplicates, res.UpstreamRequests)
	}
}

// The seed's client, run by drive.py, tries an operation three times
// against 503s, with one Idempotency-Key for all of them, and the
// application is told it is unavailable; the thin client tries once.
func TestSeedClientKeepsItsKeyAcrossTries(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// Debian's python3-httpx and python3-tenacity, as CI installs them
	e := &env{root: root, python: "/usr/bin/python3", children: newChildren()}
	defer e.children.killAll()
	for _, c := range []struct {
		setup string
		tries int
	}{{setupSeedDirect, 3}, {setupThinGateway, 1}} {
		prov, err := startShipping(1)
		if err != nil {
			t.Fatal(err)
		}
		prov.setFaults(shippingFaults{P503: 1})
		sc := &scenario{ID: "S12-test", Shipping: &shippingSpec{Ops: 3, Rate: 50}}
		recs, _, err := e.drive(context.Background(), sc, c.setup, "http://"+prov.up.addr, time.Now().Add(time.Second), t.TempDir())
		prov.close()
		if err != nil {
			t.Fatal(err)
		}
		arrivals := prov.arrivals()
		for _, rec := range recs {
			if rec.Verdict != "unavailable" || rec.Status != 503 || rec.Tries != c.tries {
				t.Errorf("%s %s: told %s after %d tries (last status %d), want unavailable after %d (503)",
					c.setup, rec.Op, rec.Verdict, rec.Tries, rec.Status, c.tries)
			}
			as := arrivals[rec.Op]
			if len(as) != c.tries {
				t.Errorf("%s %s reached the provider %d times, want %d", c.setup, rec.Op, len(as), c.tries)
				continue
			}
			for _, a := range as {
				if a.Method != rec.Method || (a.Method == "POST") != (a.Key != "" && a.Key == as[0].Key) {
					t.Errorf("%s %s: arrivals %+v, want every POST with the first one's key", c.setup, rec.Op, as)
					break
				}
			}
		}
		if len(recs) != 3 || recs[2].Method != "GET" {
			t.Fatalf("%s: operations %+v, want o0 and o1 POST, o2 GET", c.setup, recs)
		}
	}
}
