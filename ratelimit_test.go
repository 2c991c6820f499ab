package resilient

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/time/rate"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]rate.Limit{"100/s": 100, "600/m": 10, "3600/h": 1, "0.5/s": 0.5} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "100", "0/s", "-1/s", "10/d", "x/s", "NaN/s", "Inf/s", "/s"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) accepted", bad)
		}
	}
}

func TestRateLimitDefaults(t *testing.T) {
	rl := &RateLimit{Rate: "50/s"}
	if err := rl.provision(); err != nil {
		t.Fatal(err)
	}
	if rl.Burst != 50 || rl.maxWait != time.Second || !rl.obey {
		t.Fatalf("defaults: burst %d, max_wait %v, obey %v; want 50, 1s, true", rl.Burst, rl.maxWait, rl.obey)
	}
	slow := &RateLimit{Rate: "10/m"}
	if err := slow.provision(); err != nil || slow.Burst != 1 {
		t.Fatalf("a rate under one a second: burst %d (%v), want 1", slow.Burst, err)
	}
	var zero caddy.Duration
	never := &RateLimit{Rate: "1/s", MaxWait: &zero}
	if err := never.provision(); err != nil || never.maxWait != 0 {
		t.Fatalf("max_wait 0: %v (%v), want never waiting", never.maxWait, err)
	}
}

func TestBucketNeverHandsOutMoreThanRatePlusBurst(t *testing.T) {
	b := newBucket(10, 2)
	t0 := time.Unix(1_000_000, 0)
	granted := 0
	for i := 0; i < 1000; i++ {
		now := t0.Add(time.Duration(i) * time.Millisecond) // 1000 asks in a second
		if _, wait, ok := b.take(now, 0); ok && wait == 0 {
			granted++
		}
	}
	// at most the burst, and ten a second after it
	if granted < 10 || granted > 2+10 {
		t.Fatalf("%d tokens in one second at 10/s with burst 2", granted)
	}
}

func TestBucketWaitsSpreadABurst(t *testing.T) {
	b := newBucket(10, 1)
	now := time.Unix(1_000_000, 0)
	for i := 0; i < 5; i++ {
		_, wait, ok := b.take(now, time.Second)
		if !ok {
			t.Fatalf("request %d refused, with a second to wait", i+1)
		}
		if want := time.Duration(i) * 100 * time.Millisecond; wait < want-time.Millisecond || wait > want+time.Millisecond {
			t.Fatalf("request %d waits %v, want %v", i+1, wait, want)
		}
	}
	// the next would wait 500ms: over a max_wait of 400ms it is refused,
	// told when a token would be there, and takes nothing
	if _, wait, ok := b.take(now, 400*time.Millisecond); ok || wait < 499*time.Millisecond {
		t.Fatalf("over max_wait: ok %v, retry after %v", ok, wait)
	}
	if _, wait, ok := b.take(now, time.Second); !ok || wait > 501*time.Millisecond {
		t.Fatalf("a refusal took a token: the next waits %v", wait)
	}
}

func TestBucketCancelGivesThePlaceBack(t *testing.T) {
	b := newBucket(10, 1)
	now := time.Now()
	if _, _, ok := b.take(now, time.Second); !ok {
		t.Fatal("first token refused")
	}
	tok, wait, ok := b.take(now, time.Second)
	if !ok || wait < 90*time.Millisecond {
		t.Fatalf("second token: %v %v", ok, wait)
	}
	tok.cancel() // the client left while it waited
	if _, again, _ := b.take(now, time.Second); again > wait {
		t.Fatalf("after a cancel the next waits %v, want the place given back (%v)", again, wait)
	}
}

// A token due at once and not used (a hedge refused after it took one,
// or one that never left) goes back too: x/time/rate counts a
// reservation already due as spent.
func TestBucketCancelGivesBackATokenDueAtOnce(t *testing.T) {
	b := newBucket(rate.Limit(1.0/3600), 2) // rate 1/h burst 2
	now := time.Now()
	if _, _, ok := b.take(now, 0); !ok {
		t.Fatal("first token refused")
	}
	tok, wait, ok := b.take(now, 0)
	if !ok || wait != 0 {
		t.Fatalf("second token: %v, due in %v", ok, wait)
	}
	time.Sleep(time.Millisecond) // it is due, and not used
	tok.cancel()
	if _, _, ok := b.take(time.Now(), 0); !ok {
		t.Fatal("the token given back is not there")
	}
	if _, _, ok := b.take(time.Now(), 0); ok {
		t.Fatal("a third token at 1/h with burst 2: cancel gave back more than one")
	}

	// never more than the burst: a token given back to a full bucket is lost
	full := newBucket(rate.Limit(1.0/3600), 1)
	tok, _, _ = full.take(time.Now(), 0)
	time.Sleep(time.Millisecond)
	tok.cancel()
	tok.cancel() // twice: the second finds the bucket full
	if _, _, ok := full.take(time.Now(), 0); !ok {
		t.Fatal("the token given back is not there")
	}
	if _, _, ok := full.take(time.Now(), 0); ok {
		t.Fatal("two cancels of one token gave back two: more than the burst")
	}
}

func TestBucketPauseEmptiesItUntilThen(t *testing.T) {
	b := newBucket(100, 10) // a full bucket of ten
	now := time.Now()
	held, _, _ := b.take(now, 0)
	b.pause(now.Add(2 * time.Second)) // 429 with Retry-After: 2
	if !held.void() {
		t.Fatal("a token taken before the pause still stands")
	}
	_, wait, ok := b.take(now.Add(time.Second), 500*time.Millisecond)
	if ok || wait < 999*time.Millisecond {
		t.Fatalf("during the pause: ok %v, retry after %v; want refused until the pause ends", ok, wait)
	}
	// after it the bucket refills from empty, at the rate: no burst of ten
	after := now.Add(2 * time.Second)
	granted := 0
	for i := 0; i < 10; i++ {
		if _, w, ok := b.take(after.Add(50*time.Millisecond), 0); ok && w == 0 {
			granted++
		}
	}
	if granted > 5+1 {
		t.Fatalf("%d tokens 50ms after the pause at 100/s: it did not start empty", granted)
	}
	// a shorter Retry-After does not cut a pause short
	b.pause(now.Add(time.Second))
	if b.paused != now.Add(2*time.Second) {
		t.Fatalf("pause moved to %v", b.paused)
	}
}

func TestLimiterKeysAreBounded(t *testing.T) {
	rl := &RateLimit{Rate: "1000/s", Key: "{k}"}
	if err := rl.provision(); err != nil {
		t.Fatal(err)
	}
	l := &limiter{cfg: rl, buckets: map[string]*bucket{}}
	for i := 0; i < maxBuckets+500; i++ {
		l.bucketFor(time.Duration(i).String())
	}
	if n := len(l.buckets); n > maxBuckets {
		t.Fatalf("%d buckets held, want at most %d", n, maxBuckets)
	}
}
