package resilient

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// latency tracks one upstream's times to response headers over the last
// 10 s, for the percentile a hedge waits (hedge.after p95).
//
// Every answer feeds it, and so does every first attempt a hedge beat
// (observeCut): its time to headers is unknown, only longer than what
// it waited when it was canceled. Left out, the slow answers hedges cut
// short would never be counted: the percentile would fall, hedges would
// go out sooner and cut more of them, until it sat at `min` whatever the
// upstream does. Counted as if they had answered when they were cut,
// they would hold it below the slow answers, creeping up by a hedge's
// own time per recomputation. So the window keeps them apart, and the
// quantile is the Kaplan-Meier one: a cut attempt counts among those
// still waiting up to its cut, and says nothing past it. When the
// percentile lies past every cut (the hedge delay is below the slow
// answers), it is not known: quantile then says twice the longest cut,
// so that the next first attempts wait longer, until answers past the
// cut are seen again. (A hedge that lost is not counted: it only says it
// was slower than what was left of the first attempt's wait.)
//
// observe takes no lock and allocates nothing: the window is 10
// one-second slots, each a log-linear histogram of atomic counters. A
// slot is reset by the first sample of a new second that maps to it (a
// CAS on the slot's second, then the counters are zeroed). A sample
// racing that reset may be lost, or counted in the second that is going
// away: a few samples out of a second's worth do not move a percentile.
//
// The histogram has 8 linear buckets per power of two from 2^15 ns
// (~33µs) to 2^36 ns (~69 s), 168 in all; a bucket stands for its
// midpoint, so a quantile is within ~6% of the true one. Shorter and
// longer times count in the end buckets. A tracker takes a fixed ~13.5 KB
// (10 slots of 168 8-byte counters, answers and cuts, and their second),
// however busy the upstream.
//
// quantile is asked once per request that may be hedged: it returns a
// value computed at most latencyRefresh ago, and one caller at a time
// recomputes it (a CAS on the refresh time) while the others read the
// last value.
type latency struct {
	clock func() time.Time
	slots [latencySlots]latencySlot

	refreshed atomic.Int64  // unix nanos of the last recomputation
	cached    atomic.Uint64 // the last quantile, see packQuantile
}

type latencySlot struct {
	sec atomic.Int64 // the unix second the counts are for
	// per bucket: answers in the low 32 bits, cut attempts in the high
	// 32 (one counter, so that a reset clears both at once)
	counts [latencyBuckets]atomic.Uint64
}

// latencyCut is one cut attempt in a bucket's counter.
const latencyCut = 1 << 32

const (
	latencySlots    = 10 // seconds in the window
	latencySubBits  = 3  // 8 buckets per power of two
	latencyMinExp   = 15 // 2^15 ns, ~33µs: the first bucket
	latencyMaxExp   = 36 // 2^36 ns, ~69s: past the last bucket
	latencyBuckets  = (latencyMaxExp - latencyMinExp) << latencySubBits
	latencyMinCount = 20 // samples in the window before a quantile means anything

	// latencyRefresh is how long a computed quantile is reused: a hedge
	// delay a few tens of milliseconds behind the traffic is as good,
	// and recomputing reads every counter of the window.
	latencyRefresh = 50 * time.Millisecond
)

// newLatency returns an empty tracker. clock (time.Now in production,
// nil for it) is read when observe or quantile is given a zero time.
func newLatency(clock func() time.Time) *latency {
	if clock == nil {
		clock = time.Now
	}
	return &latency{clock: clock}
}

// observe counts one time to response headers, d, that came at now.
func (l *latency) observe(now time.Time, d time.Duration) {
	l.count(now, d, 1)
}

// observeCut counts a first attempt canceled at now after waiting
// waited, because a hedge answered first.
func (l *latency) observeCut(now time.Time, waited time.Duration) {
	l.count(now, waited, latencyCut)
}

// count adds n to d's bucket in the slot of now.
func (l *latency) count(now time.Time, d time.Duration, n uint64) {
	if now.IsZero() {
		now = l.clock()
	}
	sec := now.Unix()
	s := &l.slots[uint64(sec)%latencySlots]
	if cur := s.sec.Load(); cur != sec {
		if cur > sec {
			return // now is a whole window late: its second is gone
		}
		if s.sec.CompareAndSwap(cur, sec) {
			for i := range s.counts {
				s.counts[i].Store(0)
			}
		}
	}
	s.counts[latencyBucket(d)].Add(n)
}

// quantile returns the q-quantile (0.5 … 0.999) of the samples of the
// last 10 s; ok is false while they are fewer than 20. The value is up to
// latencyRefresh old; a q other than the one asked last is computed
// afresh (an upstream is hedged at one percentile).
func (l *latency) quantile(now time.Time, q float64) (d time.Duration, ok bool) {
	if now.IsZero() {
		now = l.clock()
	}
	key := quantileKey(q)
	n := now.UnixNano()
	c := l.cached.Load()
	at := l.refreshed.Load()
	if c>>quantileKeyShift&quantileKeyMask == key && n-at < int64(latencyRefresh) {
		// fresh (a now older than the last recomputation too)
		return unpackQuantile(c)
	}
	if !l.refreshed.CompareAndSwap(at, n) {
		// another caller is recomputing: its last value will do
		if c>>quantileKeyShift&quantileKeyMask == key {
			return unpackQuantile(c)
		}
		return unpackQuantile(l.compute(now, q, key))
	}
	c = l.compute(now, q, key)
	l.cached.Store(c)
	return unpackQuantile(c)
}

// compute reads the window as of now and returns its q-quantile packed.
func (l *latency) compute(now time.Time, q float64, key uint64) uint64 {
	var answers, cuts [latencyBuckets]uint64
	var total uint64
	oldest := now.Unix() - latencySlots
	for i := range l.slots {
		s := &l.slots[i]
		if s.sec.Load() <= oldest {
			continue
		}
		for j := range s.counts {
			c := s.counts[j].Load()
			answers[j] += c & (latencyCut - 1)
			cuts[j] += c >> 32
			total += c&(latencyCut-1) + c>>32
		}
	}
	if total < latencyMinCount {
		return key << quantileKeyShift
	}
	// Kaplan-Meier: the share of attempts still waiting after each
	// bucket is the product of the shares of those waiting into it that
	// did not answer in it; a cut attempt waits into its bucket, then
	// leaves the count. With no cuts this is the nearest rank. The
	// epsilon keeps rounding from reading 950 answers of 1000 as short
	// of p95.
	q = min(max(q, 0), 1)
	waiting, still := total, 1.0
	lastCut := -1
	for i := range answers {
		if a := answers[i]; a > 0 {
			still *= 1 - float64(a)/float64(waiting)
			if 1-still >= q-1e-9 {
				return packQuantile(key, latencyValue(i))
			}
		}
		if cuts[i] > 0 {
			lastCut = i
		}
		if waiting -= answers[i] + cuts[i]; waiting == 0 {
			break
		}
	}
	if lastCut < 0 {
		return packQuantile(key, latencyValue(latencyBuckets-1))
	}
	// past every cut: not known, and longer than the longest
	return packQuantile(key, min(2*latencyValue(lastCut), latencyValue(latencyBuckets-1)))
}

// The cached quantile is one word, so a reader never sees the value of
// one q with the key of another: bit 63 is ok, bits 40-62 the q it is
// for (in 1/1,000,000), bits 0-39 the duration in nanoseconds (up to
// ~18 min, far past the last bucket).
const (
	quantileOK       = 1 << 63
	quantileKeyShift = 40
	quantileKeyMask  = 1<<23 - 1
	quantileDMask    = 1<<quantileKeyShift - 1
)

// quantileKey is q in millionths, 1 to 1,000,000: never 0, which is the
// key of a tracker that has computed nothing yet.
func quantileKey(q float64) uint64 {
	if !(q > 0) { // NaN too
		return 1
	}
	return uint64(max(1, math.Round(min(q, 1)*1e6)))
}

func packQuantile(key uint64, d time.Duration) uint64 {
	return quantileOK | key<<quantileKeyShift | uint64(d)&quantileDMask
}

func unpackQuantile(c uint64) (time.Duration, bool) {
	return time.Duration(c & quantileDMask), c&quantileOK != 0
}

// latencyBucket is the histogram bucket d counts in: the power of two
// below it, then which eighth of that octave.
func latencyBucket(d time.Duration) int {
	if d < 1<<latencyMinExp {
		return 0
	}
	if d >= 1<<latencyMaxExp {
		return latencyBuckets - 1
	}
	x := uint64(d)
	e := bits.Len64(x) - 1
	return (e-latencyMinExp)<<latencySubBits | int(x>>(e-latencySubBits))&(1<<latencySubBits-1)
}

// latencyValue is the time bucket i stands for: its midpoint.
func latencyValue(i int) time.Duration {
	e := i>>latencySubBits + latencyMinExp
	width := int64(1) << (e - latencySubBits)
	lo := int64(1)<<e + int64(i&(1<<latencySubBits-1))*width
	return time.Duration(lo + width/2)
}
