package resilient

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// latencyOnClock returns a tracker and the fake clock its tests drive.
func latencyOnClock() (*latency, *fakeClock) {
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	return newLatency(clock.Now), clock
}

// quantileAfterRefresh asks for q once a cached value has gone stale.
func quantileAfterRefresh(l *latency, clock *fakeClock, q float64) (time.Duration, bool) {
	clock.Advance(latencyRefresh)
	return l.quantile(clock.Now(), q)
}

// within reports whether got is within frac of want.
func within(got, want time.Duration, frac float64) bool {
	diff := float64(got - want)
	return diff <= frac*float64(want) && -diff <= frac*float64(want)
}

// latencySamples counts the samples the tracker holds, in every slot.
func latencySamples(l *latency) uint64 {
	var n uint64
	for i := range l.slots {
		for j := range l.slots[i].counts {
			c := l.slots[i].counts[j].Load()
			n += c&(latencyCut-1) + c>>32
		}
	}
	return n
}

func TestLatencyBucketsWithinSixPercent(t *testing.T) {
	prev := -1
	for d := time.Duration(1 << latencyMinExp); d < 1<<latencyMaxExp; d += d/97 + 1 {
		i := latencyBucket(d)
		if i < prev {
			t.Fatalf("%v went to bucket %d, below the %d of a shorter time", d, i, prev)
		}
		prev = i
		if v := latencyValue(i); !within(v, d, 0.0625) {
			t.Fatalf("%v stands as %v in bucket %d: more than 6.25%% off", d, v, i)
		}
	}
	if got := latencyBucket(time.Microsecond); got != 0 {
		t.Errorf("1µs in bucket %d, want the first", got)
	}
	if got := latencyBucket(-time.Second); got != 0 {
		t.Errorf("a negative time in bucket %d, want the first", got)
	}
	if got := latencyBucket(time.Hour); got != latencyBuckets-1 {
		t.Errorf("1h in bucket %d, want the last (%d)", got, latencyBuckets-1)
	}
}

func TestLatencyNoQuantileBeforeTwentySamples(t *testing.T) {
	l, clock := latencyOnClock()
	for i := 0; i < latencyMinCount-1; i++ {
		l.observe(clock.Now(), 5*time.Millisecond)
	}
	if d, ok := quantileAfterRefresh(l, clock, 0.95); ok {
		t.Fatalf("p95 = %v from %d samples; want none before %d", d, latencyMinCount-1, latencyMinCount)
	}
	l.observe(clock.Now(), 5*time.Millisecond)
	if d, ok := quantileAfterRefresh(l, clock, 0.95); !ok || !within(d, 5*time.Millisecond, 0.0625) {
		t.Fatalf("p95 = %v, %v from %d samples of 5ms", d, ok, latencyMinCount)
	}
}

func TestLatencyQuantilesOfAKnownDistribution(t *testing.T) {
	l, clock := latencyOnClock()
	rng := rand.New(rand.NewPCG(3, 4))
	samples := make([]time.Duration, 0, 1000)
	for i := 0; i < 950; i++ {
		samples = append(samples, 5*time.Millisecond)
	}
	for i := 0; i < 50; i++ {
		samples = append(samples, time.Second)
	}
	rng.Shuffle(len(samples), func(i, j int) { samples[i], samples[j] = samples[j], samples[i] })
	for i, d := range samples {
		// spread over 5 s of the window
		l.observe(clock.Now().Add(time.Duration(i)*5*time.Millisecond), d)
	}
	clock.Advance(5 * time.Second)
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.95, 5 * time.Millisecond}, {0.99, time.Second}, {0.999, time.Second}} {
		l.refreshed.Store(0) // each q afresh
		if d, ok := l.quantile(clock.Now(), tc.q); !ok || !within(d, tc.want, 0.0625) {
			t.Errorf("p%v = %v, %v; want %v within 6.25%%", tc.q*100, d, ok, tc.want)
		}
	}
}

func TestLatencyQuantilesOfAUniformDistribution(t *testing.T) {
	l, clock := latencyOnClock()
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 5000; i++ {
		d := time.Millisecond + time.Duration(rng.Int64N(int64(99*time.Millisecond)))
		l.observe(clock.Now(), d)
		clock.Advance(time.Millisecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50500 * time.Microsecond}, {0.9, 90100 * time.Microsecond}, {0.99, 99010 * time.Microsecond}} {
		if d, ok := quantileAfterRefresh(l, clock, tc.q); !ok || !within(d, tc.want, 0.1) {
			t.Errorf("p%v = %v, %v; want %v within 10%%", tc.q*100, d, ok, tc.want)
		}
	}
}

func TestLatencySamplesLeaveTheWindowAfterTenSeconds(t *testing.T) {
	l, clock := latencyOnClock()
	for i := 0; i < 100; i++ {
		l.observe(clock.Now(), 20*time.Millisecond)
	}
	clock.Advance(9*time.Second + 900*time.Millisecond)
	if _, ok := l.quantile(clock.Now(), 0.95); !ok {
		t.Fatal("samples of 9.9 s ago are gone; the window is 10 s")
	}
	clock.Advance(100 * time.Millisecond)
	if d, ok := l.quantile(clock.Now(), 0.95); ok {
		t.Fatalf("p95 = %v from samples 10 s old; after 10 s without traffic there is none", d)
	}
	// and the slot's second comes round again: the old counts are not in it
	clock.Advance(10 * time.Second)
	for i := 0; i < latencyMinCount; i++ {
		l.observe(clock.Now(), time.Second)
	}
	if d, ok := quantileAfterRefresh(l, clock, 0.5); !ok || !within(d, time.Second, 0.0625) {
		t.Fatalf("p50 = %v, %v; want 1s, the old 20ms samples forgotten", d, ok)
	}
}

func TestLatencyFollowsAnUpstreamThatSlowsDown(t *testing.T) {
	l, clock := latencyOnClock()
	run := func(d time.Duration, secs int) {
		for i := 0; i < secs*100; i++ { // 100 answers a second
			l.observe(clock.Now(), d)
			clock.Advance(10 * time.Millisecond)
		}
	}
	run(10*time.Millisecond, 10)
	if d, ok := l.quantile(clock.Now(), 0.95); !ok || !within(d, 10*time.Millisecond, 0.0625) {
		t.Fatalf("p95 = %v, %v after 10 s of 10ms answers", d, ok)
	}
	// one second of slow answers is a tenth of the window: above p90
	run(200*time.Millisecond, 1)
	if d, _ := quantileAfterRefresh(l, clock, 0.95); !within(d, 200*time.Millisecond, 0.0625) {
		t.Fatalf("p95 = %v with a tenth of the window at 200ms, want 200ms", d)
	}
	run(200*time.Millisecond, 9)
	if d, _ := quantileAfterRefresh(l, clock, 0.5); !within(d, 200*time.Millisecond, 0.0625) {
		t.Fatalf("p50 = %v after 10 s of 200ms answers, want 200ms", d)
	}
}

// Attempts a hedge cut short, all past the percentile, leave it where
// the answers put it.
func TestLatencyCutsPastThePercentileDoNotMoveIt(t *testing.T) {
	l, clock := latencyOnClock()
	for i := 0; i < 950; i++ {
		l.observe(clock.Now(), 5*time.Millisecond)
	}
	for i := 0; i < 50; i++ {
		l.observeCut(clock.Now(), 20*time.Millisecond)
	}
	if d, ok := quantileAfterRefresh(l, clock, 0.95); !ok || !within(d, 5*time.Millisecond, 0.0625) {
		t.Fatalf("p95 = %v, %v; want the answers' 5ms", d, ok)
	}
	// p99 lies among the cut attempts: longer than any cut, not known
	l.refreshed.Store(0)
	if d, ok := l.quantile(clock.Now(), 0.99); !ok || d <= 20*time.Millisecond {
		t.Fatalf("p99 = %v, %v; want longer than the 20ms cuts", d, ok)
	}
}

// Past the cuts, answers that came count as they would without them: a
// cut attempt is among those waiting up to its cut only.
func TestLatencyAnswersPastTheCutsSetThePercentile(t *testing.T) {
	l, clock := latencyOnClock()
	for i := 0; i < 900; i++ {
		l.observe(clock.Now(), 2*time.Millisecond)
	}
	for i := 0; i < 80; i++ {
		l.observeCut(clock.Now(), 100*time.Millisecond)
	}
	for i := 0; i < 20; i++ {
		l.observe(clock.Now(), 250*time.Millisecond)
	}
	if d, ok := quantileAfterRefresh(l, clock, 0.95); !ok || !within(d, 250*time.Millisecond, 0.0625) {
		t.Fatalf("p95 = %v, %v; want 250ms, the answers past the cuts", d, ok)
	}
}

// An upstream whose answers take 2ms, one in ten 250ms, hedged at its
// own p95: the hedges cut the slow answers short, yet the percentile
// finds them, where counting only answers sinks it to `min`.
func TestLatencyHedgingDoesNotHideTheTail(t *testing.T) {
	simulate := func(cut bool) time.Duration {
		l, clock := latencyOnClock()
		const minDelay, hedgeTook = 10 * time.Millisecond, 2 * time.Millisecond
		for i := 0; i < 1000; i++ { // 5 s at 200 requests a second
			took := 2 * time.Millisecond
			if i%10 == 9 {
				took = 250 * time.Millisecond
			}
			delay, ok := l.quantile(clock.Now(), 0.95)
			switch {
			case !ok || took <= max(delay, minDelay):
				l.observe(clock.Now(), took)
			default: // hedged, and the hedge answered first
				l.observe(clock.Now(), hedgeTook)
				if cut {
					l.observeCut(clock.Now(), max(delay, minDelay)+hedgeTook)
				}
			}
			clock.Advance(5 * time.Millisecond)
		}
		d, _ := quantileAfterRefresh(l, clock, 0.95)
		return d
	}
	if d := simulate(true); d < 200*time.Millisecond {
		t.Errorf("p95 = %v with the cut attempts counted; the upstream's is 250ms", d)
	}
	if d := simulate(false); d >= 200*time.Millisecond {
		t.Errorf("p95 = %v without the cut attempts: the simulation no longer shows what they are for", d)
	}
}

func TestLatencyQuantileIsCachedBriefly(t *testing.T) {
	l, clock := latencyOnClock()
	for i := 0; i < 100; i++ {
		l.observe(clock.Now(), 10*time.Millisecond)
	}
	if d, _ := l.quantile(clock.Now(), 0.5); !within(d, 10*time.Millisecond, 0.0625) {
		t.Fatalf("p50 = %v, want 10ms", d)
	}
	for i := 0; i < 1000; i++ {
		l.observe(clock.Now(), time.Second)
	}
	clock.Advance(latencyRefresh - time.Millisecond)
	if d, _ := l.quantile(clock.Now(), 0.5); !within(d, 10*time.Millisecond, 0.0625) {
		t.Fatalf("p50 = %v within %v of the last computation, want the cached 10ms", d, latencyRefresh)
	}
	if d, _ := l.quantile(clock.Now(), 0.9); !within(d, time.Second, 0.0625) {
		t.Fatalf("p90 = %v: another q must not get p50's cached value", d)
	}
	clock.Advance(latencyRefresh)
	if d, _ := l.quantile(clock.Now(), 0.5); !within(d, time.Second, 0.0625) {
		t.Fatalf("p50 = %v after %v, want it recomputed to 1s", d, latencyRefresh)
	}
}

func TestLatencyConcurrentObserve(t *testing.T) {
	l, clock := latencyOnClock()
	now := clock.Now()
	l.observe(now, time.Millisecond) // the slot's second is set: no reset races the rest
	const goroutines, each = 8, 5000
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				l.observe(now, time.Duration(g+1)*time.Millisecond)
				if i%100 == 0 {
					l.quantile(now.Add(time.Duration(i)*time.Millisecond), 0.95)
				}
			}
		}()
	}
	wg.Wait()
	if n := latencySamples(l); n != goroutines*each+1 {
		t.Fatalf("%d samples counted, want %d", n, goroutines*each+1)
	}
	if d, ok := quantileAfterRefresh(l, clock, 0.5); !ok || !within(d, 4500*time.Microsecond, 0.15) {
		t.Fatalf("p50 = %v, %v of 1ms..8ms evenly, want ~4.5ms", d, ok)
	}
}

func TestLatencyConcurrentObserveAcrossSeconds(t *testing.T) {
	// resets racing samples may lose a few; nothing may break
	l, clock := latencyOnClock()
	start := clock.Now()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				now := start.Add(time.Duration(i) * time.Millisecond)
				l.observe(now, 3*time.Millisecond)
				if i%50 == 0 {
					l.quantile(now, 0.99)
				}
			}
		}()
	}
	wg.Wait()
	end := start.Add(20 * time.Second)
	if d, ok := l.quantile(end, 0.99); !ok || !within(d, 3*time.Millisecond, 0.0625) {
		t.Fatalf("p99 = %v, %v; want 3ms", d, ok)
	}
}

// The benchmarks move their own clock by 1µs an operation: time.Now
// would be most of what they measure, and the exchange reads it anyway.

func BenchmarkLatencyObserve(b *testing.B) {
	l := newLatency(time.Now)
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Microsecond)
		l.observe(now, time.Duration(i&1023)*time.Millisecond)
	}
}

func BenchmarkLatencyObserveParallel(b *testing.B) {
	l := newLatency(time.Now)
	start := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := start
		for i := 0; pb.Next(); i++ {
			now = now.Add(time.Microsecond)
			l.observe(now, time.Duration(5+i&3)*time.Millisecond)
		}
	})
}

// fullLatency returns a tracker with samples in all ten seconds of the
// window as of the time it returns.
func fullLatency() (*latency, time.Time) {
	l := newLatency(time.Now)
	now := time.Now()
	for i := 0; i < 10_000; i++ {
		now = now.Add(time.Millisecond)
		l.observe(now, time.Duration(i%1000)*time.Millisecond)
	}
	return l, now
}

func BenchmarkLatencyQuantile(b *testing.B) {
	l, now := fullLatency()
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.quantile(now, 0.95)
	}
}

func BenchmarkLatencyQuantileParallel(b *testing.B) {
	l, start := fullLatency()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := start
		for pb.Next() {
			now = now.Add(time.Microsecond)
			l.observe(now, 5*time.Millisecond)
			l.quantile(now, 0.95)
		}
	})
}

// BenchmarkLatencyCompute is the recomputation that latencyRefresh
// spaces out: a read of every counter of the window.
func BenchmarkLatencyCompute(b *testing.B) {
	l, now := fullLatency()
	b.ReportAllocs()
	for b.Loop() {
		l.compute(now, 0.95, quantileKey(0.95))
	}
}
