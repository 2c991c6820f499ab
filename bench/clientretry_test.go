package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// The client of S10 gives up after its timeout, waits out a 409's
// Retry-After (capped), and stops at the replay.
func TestResendUntilReplay(t *testing.T) {
	var mu sync.Mutex
	var done time.Time // when the first send's answer was kept; zero while in flight
	inFlight := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		switch {
		case !done.IsZero():
			mu.Unlock()
			w.Header().Set("Idempotent-Replayed", "true")
			w.Write([]byte("ok"))
			return
		case inFlight:
			mu.Unlock()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusConflict)
			return
		}
		inFlight = true
		mu.Unlock()
		time.Sleep(450 * time.Millisecond) // kept although its client left
		mu.Lock()
		done = time.Now()
		mu.Unlock()
	}))
	defer srv.Close()

	spec := loadSpec{Timeout: 5 * time.Second, Mix: func(int) class { return classPostKey },
		Route:  func(int) string { return "/api/" },
		Resend: &resend{Sends: 4, Timeout: 300 * time.Millisecond, MaxWait: 300 * time.Millisecond}}
	start := time.Now()
	s := spec.do(context.Background(), newClient(), []string{srv.Listener.Addr().String()}, 1, start, start)
	// 0: sent, 300ms: gave up, sent again, 409; 600ms: sent again, replay
	if s.Status != http.StatusOK || !s.Replayed || s.Sends != 3 || s.Conflicts != 1 {
		t.Fatalf("status %d, replayed %v, sends %d, 409s %d; want 200, true, 3, 1", s.Status, s.Replayed, s.Sends, s.Conflicts)
	}
	if s.Latency < 550*time.Millisecond || s.Latency > 900*time.Millisecond {
		t.Fatalf("latency %v, want about 600ms", s.Latency)
	}
}
