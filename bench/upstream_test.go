package main

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// A slow answer whose request ends (a hedge that lost) frees the
// upstream at once, and still counts as an arrival (S11).
func TestSlowAnswerEndsWithItsRequest(t *testing.T) {
	up, err := startUpstream(true)
	if err != nil {
		t.Fatal(err)
	}
	defer up.close()
	up.setFaults(faults{PSlow: 1, Slow: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+up.addr+"/api/g1", nil)
	req.Header.Set("X-Bench-Id", "g1")
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("a 10s answer came within 100ms")
	}
	deadline := time.Now().Add(time.Second)
	for up.inFlight.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slow handler still runs 1s after its request ended")
		}
		time.Sleep(5 * time.Millisecond)
	}
	as := up.stats().Arrivals["g1"]
	if len(as) != 1 || as[0].Status != 0 {
		t.Fatalf("arrivals %+v, want one, unanswered", as)
	}
}
