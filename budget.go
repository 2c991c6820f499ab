package resilient

import (
	"sync"
	"time"
)

// Budget caps retries per upstream: over a rolling 10s window they stay
// within Ratio times the requests, or else within MinPerSecond in the
// current second, so an upstream that is down is not hit with
// attempts x traffic.
type Budget struct {
	// Disabled lifts the cap (`budget off`). Default: `false`.
	Disabled bool `json:"disabled,omitempty"`
	// Retries allowed per request over the window. Default: `0.2`.
	Ratio *float64 `json:"ratio,omitempty"`
	// Retries allowed each second whatever the ratio. Default: `10`.
	MinPerSecond *int `json:"min_per_second,omitempty"`
}

// budget counts requests and retries to one upstream: over a rolling
// window of 10 one-second buckets, retries may take ratio x the requests
// of the window, plus perSecond in any one second (a sliding second, so
// that a second boundary does not let twice as many through).
type budget struct {
	ratio     float64
	perSecond int

	mu      sync.Mutex
	buckets [budgetWindow]budgetBucket
	floor   []int64 // when the last perSecond floor retries went (unix nanos), a ring
	next    int     // the oldest of them
}

const budgetWindow = 10

// maxMinPerSecond bounds budget.min_per_second, which the budget keeps a
// timestamp for each of.
const maxMinPerSecond = 1000

type budgetBucket struct {
	sec      int64
	requests int64
	ratio    int64 // retries let through by the ratio
}

func newBudget(b *Budget) *budget {
	if b == nil || b.Disabled {
		return nil
	}
	n := *b.MinPerSecond
	return &budget{ratio: *b.Ratio, perSecond: n, floor: make([]int64, n)}
}

func (b *budget) bucket(now time.Time) *budgetBucket {
	sec := now.Unix()
	bk := &b.buckets[sec%budgetWindow]
	if bk.sec != sec {
		*bk = budgetBucket{sec: sec}
	}
	return bk
}

// request counts a new request.
func (b *budget) request(now time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.bucket(now).requests++
	b.mu.Unlock()
}

// takeFloor lets a retry through on the per-second floor if fewer than
// perSecond went in the last second. Called with mu held.
func (b *budget) takeFloor(now time.Time) bool {
	if b.perSecond == 0 {
		return false
	}
	n := now.UnixNano()
	if oldest := b.floor[b.next]; oldest != 0 && n-oldest < int64(time.Second) {
		return false
	}
	b.floor[b.next] = n
	b.next = (b.next + 1) % b.perSecond
	return true
}

// count counts a retry the budget does not get to refuse: one paced by
// the upstream's own Retry-After. It still uses up the budget's room
// for other retries.
func (b *budget) count(now time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.takeFloor(now) {
		b.bucket(now).ratio++
	}
}

// allow reports whether one more retry fits, and counts it if so. The
// per-second floor is used first; the ratio adds to it.
func (b *budget) allow(now time.Time) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.takeFloor(now) {
		return true
	}
	var requests, retries int64
	oldest := now.Unix() - budgetWindow
	for i := range b.buckets {
		if bk := &b.buckets[i]; bk.sec > oldest {
			requests += bk.requests
			retries += bk.ratio
		}
	}
	if float64(retries+1) <= b.ratio*float64(requests) {
		b.bucket(now).ratio++
		return true
	}
	return false
}
