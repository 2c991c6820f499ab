package resilient

import (
	"sync"
	"time"
)

// Budget caps retries per upstream. Only the retries that fail count:
// over a rolling 10s window they stay within Ratio times the requests,
// plus MinPerSecond in any one second. A retry counts as failed while it
// is under way and stops counting once it succeeds, so an upstream that
// answers its retries gets all of them, while one that is down is not
// hit with attempts x traffic.
type Budget struct {
	// Disabled lifts the cap (`budget off`). Default: `false`.
	Disabled bool `json:"disabled,omitempty"`
	// Failing retries allowed per request over the window. Default: `0.2`.
	Ratio *float64 `json:"ratio,omitempty"`
	// Failing retries allowed each second whatever the ratio. Default: `10`.
	MinPerSecond *int `json:"min_per_second,omitempty"`
}

// budget counts requests and retries to one upstream. A retry takes a
// share of the budget before it is sent (allow, or count when the
// upstream's Retry-After sets its pace) and the share stays spent, the
// retry counted as failed, unless it is given back (giveBack) because the
// retry succeeded, or was a hedge canceled because another attempt won.
//
// Two things pay for shares, the floor first:
//
//   - The floor: perSecond shares in any sliding second. They are counted
//     per 10ms tick over the last 100 ticks, so a share taken in a tick
//     stops counting 990 to 1000ms later: any 990ms hold at most
//     perSecond of them, and a second boundary lets no more through than
//     any other moment. A floor share given back leaves its tick's count.
//   - The ratio: over a rolling window of 10 one-second buckets, ratio x
//     the requests of the window. A ratio share given back leaves its
//     second's count, while that second is in the window.
//
// Each share also carries its index among the shares of its second, and
// each second keeps a bit per share given back, so a share given back
// twice counts once. The bits are reused from second to second: 128
// shares a second fit in what newBudget allocates (a budget is ~1 KB in
// all), and a busier second grows its bucket's bits, which later seconds
// of that bucket reuse.
//
// Everything is under one mutex: request, on every request's path, is a
// lock and an increment; allow reads the 10 buckets; advancing the floor
// clears the ticks passed since the last retry, at most 100.
type budget struct {
	ratio     float64
	perSecond int

	mu      sync.Mutex
	sec     int64 // the latest second a request or share came in
	buckets [budgetWindow]budgetBucket
	floor   [floorTicks]uint16 // floor shares per tick, a ring
	head    int64              // the newest tick of floor (unix nanos / floorTick)
	inFloor int                // the sum of floor
}

const (
	budgetWindow = 10 // seconds

	floorTick  = 10 * time.Millisecond
	floorTicks = int64(time.Second / floorTick)

	// bitsPerSecond is how many shares a second can hand out before its
	// bits of shares given back need more room than newBudget gives.
	bitsPerSecond = 128
)

// maxMinPerSecond bounds budget.min_per_second: a tick's count of floor
// shares is a uint16.
const maxMinPerSecond = 1000

type budgetBucket struct {
	sec      int64
	requests int64
	ratio    int64    // ratio shares not given back
	shares   uint32   // shares handed out, floor and ratio: the next index
	back     []uint64 // bit i set: share i was given back
}

// share is what one retry took from a budget; the zero share took
// nothing.
type share struct {
	tick int64  // when it was taken: unix nanos / floorTick
	idx  uint32 // among the shares of its second
	paid payer
}

// payer is what paid for a share.
type payer uint8

const (
	paidNothing payer = iota
	paidFloor
	paidRatio
)

func newBudget(b *Budget) *budget {
	if b == nil || b.Disabled {
		return nil
	}
	bg := &budget{ratio: *b.Ratio, perSecond: *b.MinPerSecond}
	const words = bitsPerSecond / 64
	bits := make([]uint64, budgetWindow*words)
	for i := range bg.buckets {
		// capped, so that a second that outgrows its part moves out
		// instead of writing over the next one's
		bg.buckets[i].back = bits[i*words : i*words : (i+1)*words]
	}
	return bg
}

// bucket returns the bucket of second sec, emptied if it held an older
// second. Called with mu held.
func (b *budget) bucket(sec int64) *budgetBucket {
	bk := &b.buckets[sec%budgetWindow]
	if bk.sec < sec {
		*bk = budgetBucket{sec: sec, back: bk.back[:0]}
	}
	b.sec = max(b.sec, sec)
	return bk
}

// request counts a new request.
func (b *budget) request(now time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.bucket(now.Unix()).requests++
	b.mu.Unlock()
}

// allow reports whether one more retry fits now and, if so, takes its
// share; the share stays spent (the retry counts as failed) unless given
// back with giveBack. The floor pays first; the ratio adds to it.
func (b *budget) allow(now time.Time) (share, bool) {
	if b == nil {
		return share{}, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.take(now, true)
}

// count takes a share without refusing: for a retry paced by the
// upstream's own Retry-After. It still uses up the room of other
// retries, and is given back like theirs.
func (b *budget) count(now time.Time) share {
	if b == nil {
		return share{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s, _ := b.take(now, false)
	return s
}

// take hands out a share at now, from the floor when it has room, else
// from the ratio, which refuse says may say no. Called with mu held.
func (b *budget) take(now time.Time, refuse bool) (share, bool) {
	// a now older than the latest (callers read the clock before the
	// lock) is taken as the latest: the floor's ring only moves forward
	tick := max(now.UnixNano()/int64(floorTick), b.head)
	b.advanceFloor(tick)
	sec := tick / floorTicks
	bk := b.bucket(sec)
	var paid payer
	switch {
	case b.inFloor < b.perSecond:
		b.floor[tick%floorTicks]++
		b.inFloor++
		paid = paidFloor
	case !refuse || b.ratioRoom(sec):
		bk.ratio++
		paid = paidRatio
	default:
		return share{}, false
	}
	idx := bk.shares
	bk.shares++
	if int(idx/64) == len(bk.back) {
		bk.back = append(bk.back, 0)
	}
	return share{tick: tick, idx: idx, paid: paid}, true
}

// advanceFloor moves the floor's ring to tick, forgetting the ticks that
// leave the sliding second. Called with mu held.
func (b *budget) advanceFloor(tick int64) {
	if tick <= b.head {
		return
	}
	if tick-b.head >= floorTicks {
		b.floor = [floorTicks]uint16{}
		b.inFloor = 0
	} else {
		for t := b.head + 1; t <= tick; t++ {
			b.inFloor -= int(b.floor[t%floorTicks])
			b.floor[t%floorTicks] = 0
		}
	}
	b.head = tick
}

// ratioRoom reports whether the window that ends with second sec has room
// for one more ratio share. Called with mu held.
func (b *budget) ratioRoom(sec int64) bool {
	var requests, retries int64
	oldest := sec - budgetWindow
	for i := range b.buckets {
		if bk := &b.buckets[i]; bk.sec > oldest {
			requests += bk.requests
			retries += bk.ratio
		}
	}
	return float64(retries+1) <= b.ratio*float64(requests)
}

// giveBack returns a share: the retry it paid for succeeded (or was a
// hedge canceled because another attempt won). A zero share, or one given
// back already, does nothing; so does one whose second has left the
// window, or, for the floor, whose tick has left the sliding second: it
// no longer counts anyway.
func (b *budget) giveBack(s share) {
	if b == nil || s.paid == paidNothing {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sec := s.tick / floorTicks
	bk := &b.buckets[sec%budgetWindow]
	if sec <= b.sec-budgetWindow || bk.sec != sec || s.idx >= bk.shares {
		return
	}
	word, bit := s.idx/64, uint64(1)<<(s.idx%64)
	if bk.back[word]&bit != 0 {
		return
	}
	bk.back[word] |= bit
	switch s.paid {
	case paidRatio:
		bk.ratio--
	case paidFloor:
		if i := s.tick % floorTicks; s.tick > b.head-floorTicks && b.floor[i] > 0 {
			b.floor[i]--
			b.inFloor--
		}
	}
}
