package resilient

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"
)

// testBudget returns a budget of ratio and floor, as `budget ratio floor`
// configures it.
func testBudget(ratio float64, floor int) *budget {
	return newBudget(&Budget{Ratio: &ratio, MinPerSecond: &floor})
}

// budgetHeld is what a budget holds in its window.
type budgetHeld struct {
	requests int64
	ratio    int64 // ratio shares not given back
	floor    int   // floor shares in the sliding second
}

func budgetCounts(b *budget) budgetHeld {
	h := budgetHeld{floor: b.inFloor}
	for i := range b.buckets {
		if bk := &b.buckets[i]; bk.sec > b.sec-budgetWindow {
			h.requests += bk.requests
			h.ratio += bk.ratio
		}
	}
	return h
}

func TestBudgetRatioPlusFloor(t *testing.T) {
	ratio, floor := 0.2, 2
	b := newBudget(&Budget{Ratio: &ratio, MinPerSecond: &floor})
	allowed := func(now time.Time, tries int) int {
		n := 0
		for i := 0; i < tries; i++ {
			if _, ok := b.allow(now); ok {
				n++
			}
		}
		return n
	}
	t0 := time.Unix(1_000_000, 0)
	for i := 0; i < 10; i++ {
		b.request(t0)
	}
	// the floor lets 2 through, the ratio 2 more (20% of 10)
	if got := allowed(t0, 10); got != 4 {
		t.Fatalf("allowed %d retries for 10 requests, want 2 + 2", got)
	}
	// a new second: a fresh floor, but the window's ratio is spent
	if got := allowed(t0.Add(time.Second), 10); got != 2 {
		t.Fatalf("allowed %d retries in the next second, want the floor of 2", got)
	}
	// past the window everything is forgotten
	t2 := t0.Add(11 * time.Second)
	for i := 0; i < 100; i++ {
		b.request(t2)
	}
	if got := allowed(t2, 100); got != 22 {
		t.Fatalf("allowed %d retries for 100 requests, want 2 + 20", got)
	}
}

func TestBudgetFloorIsPerSlidingSecond(t *testing.T) {
	zero, floor := 0.0, 10
	b := newBudget(&Budget{Ratio: &zero, MinPerSecond: &floor})
	// ten just before a second boundary, and ten just after it would be
	// twenty in 20ms
	t0 := time.Unix(1_000_000, 0).Add(990 * time.Millisecond)
	n := 0
	for i := 0; i < 40; i++ {
		if _, ok := b.allow(t0.Add(time.Duration(i) * time.Millisecond / 2)); ok {
			n++
		}
	}
	if n != 10 {
		t.Fatalf("%d floor retries within 20ms across a second boundary, want 10", n)
	}
	if _, ok := b.allow(t0.Add(time.Second)); !ok {
		t.Fatal("a second later the floor is still spent")
	}
}

func TestBudgetOff(t *testing.T) {
	b := newBudget(&Budget{Disabled: true})
	if _, ok := b.allow(time.Now()); b != nil || !ok {
		t.Fatal("a disabled budget must allow every retry")
	}
	b.request(time.Now())
	b.giveBack(b.count(time.Now()))
}

// budgetSim plays traffic to one upstream against a budget, at the
// budget's level: each request makes up to attempts tries, each failing
// with the probability fail gives for the time it ends; a retry asks the
// budget when the try before it fails, then waits backoff, and gives its
// share back when it succeeds. Tries take took each, so retries are in
// flight (and count as failed) while later requests come.
type budgetSim struct {
	b        *budget
	rng      *rand.Rand
	attempts int
	fail     func(since time.Duration) float64
	took     time.Duration
	backoff  time.Duration

	keep bool // never give a share back, as if every retry failed

	requests  int
	succeeded int
	sent      int             // tries, the first ones included
	retries   []time.Duration // when each retry let through was decided
	pending   simTries
}

type simTry struct {
	ends time.Duration
	n    int // 1 for the first try
	s    share
}

// simTries is a heap of tries in flight, the first to end on top.
type simTries []simTry

func (h simTries) Len() int           { return len(h) }
func (h simTries) Less(i, j int) bool { return h[i].ends < h[j].ends }
func (h simTries) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *simTries) Push(x any)        { *h = append(*h, x.(simTry)) }
func (h *simTries) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

var simStart = time.Unix(1_800_000_000, 0)

func newBudgetSim(b *budget, seed uint64, fail func(time.Duration) float64) *budgetSim {
	return &budgetSim{b: b, rng: rand.New(rand.NewPCG(seed, seed+1)), attempts: 3, fail: fail,
		took: 20 * time.Millisecond, backoff: 25 * time.Millisecond}
}

// run sends rate requests a second for d, then lets the last ones end.
func (sim *budgetSim) run(rate int, d time.Duration) {
	gap := time.Second / time.Duration(rate)
	for at := time.Duration(0); at < d; at += gap {
		sim.settle(at)
		sim.requests++
		sim.sent++
		sim.b.request(simStart.Add(at))
		heap.Push(&sim.pending, simTry{ends: at + sim.took, n: 1})
	}
	sim.settle(1<<63 - 1)
}

// settle ends the tries that end by until, and sends their retries.
func (sim *budgetSim) settle(until time.Duration) {
	for len(sim.pending) > 0 && sim.pending[0].ends <= until {
		tr := heap.Pop(&sim.pending).(simTry)
		now := tr.ends
		if sim.rng.Float64() >= sim.fail(now) {
			if !sim.keep {
				sim.b.giveBack(tr.s)
			}
			sim.succeeded++
			continue
		}
		if tr.n == sim.attempts {
			continue
		}
		s, ok := sim.b.allow(simStart.Add(now))
		if !ok {
			continue
		}
		sim.retries = append(sim.retries, now)
		sim.sent++
		heap.Push(&sim.pending, simTry{ends: now + sim.backoff + sim.took, n: tr.n + 1, s: s})
	}
}

// retriesIn counts the retries let through in [from, to).
func (sim *budgetSim) retriesIn(from, to time.Duration) int {
	n := 0
	for _, at := range sim.retries {
		if at >= from && at < to {
			n++
		}
	}
	return n
}

func failing(p float64) func(time.Duration) float64 {
	return func(time.Duration) float64 { return p }
}

func TestBudgetFlakyUpstreamGetsItsRetries(t *testing.T) {
	// 30% of tries fail: 3 tries succeed for 1 - 0.3^3 = 97.3% of requests
	none := newBudgetSim(nil, 7, failing(0.3))
	none.run(100, time.Minute)
	with := newBudgetSim(testBudget(0.2, 10), 7, failing(0.3))
	with.run(100, time.Minute)
	every := newBudgetSim(testBudget(0.2, 10), 7, failing(0.3))
	every.keep = true
	every.run(100, time.Minute)
	rate := func(sim *budgetSim) float64 { return float64(sim.succeeded) / float64(sim.requests) }
	t.Logf("30%% failing tries, 100 req/s for 60 s, 3 attempts: %.2f%% succeed without a budget (%d retries), %.2f%% with `budget 0.2 10` (%d retries); %.2f%% if every retry spent it (%d retries)",
		100*rate(none), len(none.retries), 100*rate(with), len(with.retries), 100*rate(every), len(every.retries))
	if rate(with) < 0.97*rate(none) {
		t.Fatalf("%.2f%% succeed with the budget, below 97%% of the %.2f%% without", 100*rate(with), 100*rate(none))
	}
	if rate(every) >= 0.97*rate(none) {
		t.Fatalf("%.2f%% succeed even when every retry spends the budget: the test does not exercise it", 100*rate(every))
	}
}

func TestBudgetHoldsADeadUpstreamToRatioPlusFloor(t *testing.T) {
	const ratio, floor, secs = 0.2, 10, 60
	sim := newBudgetSim(testBudget(ratio, floor), 8, failing(1))
	sim.run(100, secs*time.Second)
	// the last requests' retries are decided in second 60: one more
	// second of floor
	bound := int(ratio*float64(sim.requests)) + floor*(secs+1)
	t.Logf("dead upstream, 100 req/s for %d s, 3 attempts: %d retries let through for %d requests; bound %d",
		secs, len(sim.retries), sim.requests, bound)
	if len(sim.retries) > bound {
		t.Fatalf("%d retries for %d requests; the budget allows %v x requests + %d x %d s = %d",
			len(sim.retries), sim.requests, ratio, floor, secs+1, bound)
	}
	if len(sim.retries) < bound*9/10 {
		t.Fatalf("only %d retries of the %d the budget allows", len(sim.retries), bound)
	}
}

func TestBudgetFlakyThenDeadUpstream(t *testing.T) {
	const ratio, floor = 0.2, 10
	dead := 30 * time.Second
	sim := newBudgetSim(testBudget(ratio, floor), 9, func(at time.Duration) float64 {
		if at < dead {
			return 0.3
		}
		return 1
	})
	sim.run(100, 60*time.Second)
	flaky := sim.retriesIn(0, dead)
	t.Logf("30%% failing for 30 s: %d retries; then dead for 30 s: %d", flaky, sim.retriesIn(dead, 61*time.Second))
	// one window after the upstream died, every further 10 s is held to
	// what a dead upstream gets
	gap := 10 * time.Millisecond // between requests
	most := 0
	for from := dead + 10*time.Second; from+10*time.Second <= 60*time.Second; from += time.Second {
		requests := int(10 * time.Second / gap)
		bound := int(ratio*float64(requests)) + floor*10
		n := sim.retriesIn(from, from+10*time.Second)
		if n > bound {
			t.Errorf("%d retries in the 10 s from %v, with %d requests: want at most %v x %d + %d x 10 = %d",
				n, from, requests, ratio, requests, floor, bound)
		}
		most = max(most, n)
	}
	t.Logf("from 10 s after it died, at most %d retries in any 10 s (1000 requests; bound 300)", most)
}

func TestBudgetTenPercentNoFloorAgainstADeadUpstream(t *testing.T) {
	// `budget 0.1 0`, attempts 5: 100 requests reach a dead upstream at
	// most 100 + 0.1 x 100 = 110 times
	sim := newBudgetSim(testBudget(0.1, 0), 10, failing(1))
	sim.attempts = 5
	sim.run(100, time.Second)
	t.Logf("`budget 0.1 0`, 5 attempts, 100 requests to a dead upstream: %d tries", sim.sent)
	if sim.requests != 100 || sim.sent > 110 {
		t.Fatalf("%d requests reached a dead upstream %d times, want at most 100 + 0.1 x 100 = 110", sim.requests, sim.sent)
	}
}

func TestBudgetRetriesInFlightCountAsFailed(t *testing.T) {
	b := testBudget(0.2, 2)
	t0 := time.Unix(1_000_000, 0)
	for i := 0; i < 50; i++ {
		b.request(t0)
	}
	// 50 retries asked for at once, before any answer: the floor's 2 and
	// 20% of the 50 requests
	var shares []share
	for i := 0; i < 50; i++ {
		if s, ok := b.allow(t0.Add(time.Millisecond)); ok {
			shares = append(shares, s)
		}
	}
	if len(shares) != 2+10 {
		t.Fatalf("%d retries let through at once for 50 requests, want 2 + 10", len(shares))
	}
	// all of them fail: nothing is given back, and the next ones wait
	// for the floor's next second
	if _, ok := b.allow(t0.Add(500 * time.Millisecond)); ok {
		t.Fatal("a retry let through while 12 failed ones fill the budget")
	}
	if _, ok := b.allow(t0.Add(time.Second + time.Millisecond)); !ok {
		t.Fatal("no floor retry a second later")
	}
}

func TestBudgetGiveBackFreesWhatPaid(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	// the ratio: 10 requests make room for 2
	b := testBudget(0.2, 0)
	for i := 0; i < 10; i++ {
		b.request(t0)
	}
	s1, _ := b.allow(t0)
	s2, _ := b.allow(t0)
	if _, ok := b.allow(t0); ok || s1.paid != paidRatio || s2.paid != paidRatio {
		t.Fatalf("the ratio let 3 through for 10 requests, or did not pay for 2 (%v %v)", s1.paid, s2.paid)
	}
	b.giveBack(s1)
	if _, ok := b.allow(t0.Add(3 * time.Second)); !ok {
		t.Fatal("a ratio share given back did not make room, 3 s later")
	}
	// the floor: 1 a second
	b = testBudget(0, 1)
	f, _ := b.allow(t0)
	if _, ok := b.allow(t0); ok || f.paid != paidFloor {
		t.Fatalf("the floor of 1 let 2 through, or did not pay for the first (%v)", f.paid)
	}
	b.giveBack(f)
	if _, ok := b.allow(t0.Add(500 * time.Millisecond)); !ok {
		t.Fatal("a floor share given back did not free its place in the second")
	}
}

func TestBudgetGiveBackTwiceCountsOnce(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	b := testBudget(0.2, 0)
	for i := 0; i < 10; i++ {
		b.request(t0)
	}
	s1, _ := b.allow(t0)
	b.allow(t0)
	b.giveBack(s1)
	b.giveBack(s1)
	if ratio := budgetCounts(b).ratio; ratio != 1 {
		t.Fatalf("%d ratio shares held after one of two was given back twice, want 1", ratio)
	}
	b.allow(t0)
	if _, ok := b.allow(t0); ok {
		t.Fatal("a share given back twice made room for two retries")
	}
	// the floor the same
	b = testBudget(0, 2)
	f1, _ := b.allow(t0)
	b.allow(t0)
	b.giveBack(f1)
	b.giveBack(f1)
	if floor := budgetCounts(b).floor; floor != 1 {
		t.Fatalf("%d floor shares held after one of two was given back twice, want 1", floor)
	}
}

func TestBudgetGiveBackOfNothingChangesNothing(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	b := testBudget(0.2, 2)
	var old []share
	for _, at := range []time.Time{t0, t0.Add(2 * time.Second)} {
		for i := 0; i < 100; i++ {
			b.request(at)
		}
		for _, want := range []payer{paidFloor, paidFloor, paidRatio} {
			s, _ := b.allow(at)
			if s.paid != want {
				t.Fatalf("a share at %v paid by %v, want %v", at, s.paid, want)
			}
			old = append(old, s)
		}
	}
	// 12 s later the old shares' seconds have left the window: t0's
	// bucket still holds t0, t0+2s's now holds t0+12s
	t1 := t0.Add(12 * time.Second)
	for i := 0; i < 100; i++ {
		b.request(t1)
	}
	for i := 0; i < 5; i++ {
		b.allow(t1)
	}
	before := budgetCounts(b)
	for _, s := range append(old, share{}) {
		b.giveBack(s)
		if after := budgetCounts(b); after != before {
			t.Fatalf("giving back %+v changed the counts from %+v to %+v", s, before, after)
		}
	}
	// a floor share whose second of floor has passed, its bucket still
	// in the window: the floor is not freed twice
	b = testBudget(0, 1)
	f1, _ := b.allow(t0)
	if _, ok := b.allow(t0.Add(time.Second)); !ok {
		t.Fatal("no floor retry a second later")
	}
	b.giveBack(f1)
	if _, ok := b.allow(t0.Add(time.Second + time.Millisecond)); ok {
		t.Fatal("giving back a share of the second before freed the floor of this one")
	}
}

func TestBudgetCountNeverRefusesButTakesRoom(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	b := testBudget(0, 0)
	for i := 0; i < 5; i++ {
		if s := b.count(t0); s.paid != paidRatio {
			t.Fatalf("count %d paid by %v: a paced retry is never refused", i, s.paid)
		}
	}
	// 10 requests make room for 2 retries: two paced ones take it
	b = testBudget(0.2, 0)
	for i := 0; i < 10; i++ {
		b.request(t0)
	}
	c := b.count(t0)
	b.count(t0)
	if _, ok := b.allow(t0); ok {
		t.Fatal("a retry let through where two paced ones took the room")
	}
	// and a paced retry that succeeds gives its share back like others
	b.giveBack(c)
	if _, ok := b.allow(t0); !ok {
		t.Fatal("a paced retry's share given back made no room")
	}
}

func BenchmarkBudgetRequest(b *testing.B) {
	bg := testBudget(0.2, 10)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		bg.request(now)
	}
}

func BenchmarkBudgetRequestParallel(b *testing.B) {
	bg := testBudget(0.2, 10)
	start := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := start
		for pb.Next() {
			now = now.Add(time.Microsecond)
			bg.request(now)
		}
	})
}

// BenchmarkBudgetRetry is a retry's cost: a request, then a share taken
// and given back.
func BenchmarkBudgetRetry(b *testing.B) {
	bg := testBudget(0.2, 10)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		bg.request(now)
		s, _ := bg.allow(now)
		bg.giveBack(s)
	}
}
