package resilient

import (
	"sync"
	"sync/atomic"
	"time"
)

// windowBuckets is how many buckets a breaker's rolling window has.
const windowBuckets = 10

// window counts the results of one breaker's attempts over a rolling
// window, filed by the time each result came in, and decides when the
// breaker trips.
//
// gobreaker files a result under the bucket of its admission and drops
// it once that bucket has left the window, so an attempt that hangs for
// as long as the window (a 10s attempt timeout against a 10s window)
// would never count. Counting by completion makes a slow failure count
// however long it took; gobreaker still runs the state machine.
type window struct {
	period time.Duration // of one bucket
	clock  func() time.Time

	// bumped by reset, under mu: results of older epochs are dropped
	epoch atomic.Uint64

	mu      sync.Mutex
	buckets [windowBuckets]windowBucket
	head    int64 // number (time / period) of the newest bucket
	totals  windowBucket
	run     uint32 // failures in a row, all within the window
	// running tells, without the lock, whether run is above 0: most
	// answers settle a run that is not there
	running atomic.Bool
}

type windowBucket struct {
	successes, failures, excluded uint32
	runFailures                   uint32 // failures of the current run filed here
}

func newWindow(length time.Duration) *window {
	period := length / windowBuckets
	if period <= 0 {
		period = 1
	}
	return &window{period: period, clock: time.Now}
}

// advance moves the window to now. Called with mu held.
func (w *window) advance(now time.Time) *windowBucket {
	n := now.UnixNano() / int64(w.period)
	if n > w.head {
		if n-w.head >= windowBuckets {
			w.buckets = [windowBuckets]windowBucket{}
			w.totals, w.run = windowBucket{}, 0
		} else {
			for i := w.head + 1; i <= n; i++ {
				b := &w.buckets[i%windowBuckets]
				w.totals.successes -= b.successes
				w.totals.failures -= b.failures
				w.totals.excluded -= b.excluded
				w.run -= b.runFailures
				*b = windowBucket{}
			}
		}
		w.head = n
	}
	return &w.buckets[w.head%windowBuckets]
}

// current returns the epoch results should be recorded under.
func (w *window) current() uint64 { return w.epoch.Load() }

// record counts one result of epoch, unless the window was reset since;
// it reports whether it did.
func (w *window) record(epoch uint64, failure, excluded bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if epoch != w.epoch.Load() {
		return false
	}
	b := w.advance(w.clock())
	switch {
	case excluded:
		b.excluded++
		w.totals.excluded++
	case failure:
		b.failures++
		b.runFailures++
		w.totals.failures++
		w.run++
		w.running.Store(true)
	default:
		// the run of failures ends when the answer is over (settle), so
		// an answer whose body is then cut short does not end it
		b.successes++
		w.totals.successes++
	}
	return true
}

// settle ends the run of failures: an answer recorded as a success in
// epoch is over, and it was one.
func (w *window) settle(epoch uint64) {
	if !w.running.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if epoch != w.epoch.Load() {
		return
	}
	w.run = 0
	w.running.Store(false)
	for i := range w.buckets {
		w.buckets[i].runFailures = 0
	}
}

// amend turns a success recorded in epoch into a failure: an answer
// whose body the upstream then cut short. It reports false when the
// window was reset since.
func (w *window) amend(epoch uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if epoch != w.epoch.Load() {
		return false
	}
	b := w.advance(w.clock())
	for i := int64(0); i < windowBuckets; i++ {
		if o := &w.buckets[(w.head-i)%windowBuckets]; o.successes > 0 {
			o.successes--
			w.totals.successes--
			break
		}
	}
	b.failures++
	b.runFailures++
	w.totals.failures++
	w.run++
	w.running.Store(true)
	return true
}

// reset clears the window and starts a new epoch.
func (w *window) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.epoch.Add(1)
	w.buckets = [windowBuckets]windowBucket{}
	w.totals, w.run = windowBucket{}, 0
}

// windowCounts are the window's counts at one moment.
type windowCounts struct {
	successes, failures, excluded, consecutiveFailures uint32
}

func (c windowCounts) results() uint32 { return c.successes + c.failures }

// counts returns the counts as of now.
func (w *window) counts() windowCounts {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance(w.clock())
	return windowCounts{w.totals.successes, w.totals.failures, w.totals.excluded, w.run}
}

// trips applies the trip rule to c: once the window holds minRequests
// results, the failure ratio alone decides; while it holds fewer (a
// quiet upstream), a run of consecutive failures does. A busy upstream
// with a steady error rate below the ratio never trips.
func (cfg *Breaker) trips(c windowCounts) bool {
	if n := c.results(); n >= uint32(cfg.MinRequests) {
		return float64(c.failures) >= cfg.FailureRatio*float64(n)
	}
	consec := uint32(*cfg.ConsecutiveFailures)
	return consec > 0 && c.consecutiveFailures >= consec
}
