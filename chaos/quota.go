package chaos

import (
	"encoding/json"
	"hash/maphash"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// statsHeader marks a request for the quota counts rather than one to
// misbehave on.
const statsHeader = "X-Chaos-Stats"

// now is the clock the quotas read; tests replace it.
var now = time.Now

// quota lets at most limit requests per key through in each window. The
// windows are fixed and back to back from the quota's start, so every
// request agrees on where one ends, whatever its key. Only the requests let
// through count: one refused does not push the next window further away.
type quota struct {
	limit  int
	window time.Duration
	perKey bool
	start  time.Time
	seed   maphash.Seed

	mu   sync.Mutex
	used map[uint64]windowUse
}

// windowUse is how many requests of one key a window has let through.
type windowUse struct {
	window int64 // index from the quota's start
	n      int
}

func newQuota(f *Fault) *quota {
	return &quota{
		limit:  f.Limit,
		window: time.Duration(f.Window),
		perKey: f.PerKey,
		start:  now(),
		seed:   maphash.MakeSeed(),
		used:   make(map[uint64]windowUse),
	}
}

// admit counts a request of key and reports whether it fits in the current
// window; when it does not, untilNext is how long until the next window.
func (q *quota) admit(key string) (untilNext time.Duration, ok bool) {
	if !q.perKey {
		key = ""
	}
	k := maphash.String(q.seed, key)
	q.mu.Lock()
	defer q.mu.Unlock()
	// Read under the lock, so that the windows of concurrent requests are
	// seen in order and a late one cannot reopen a window that is over.
	elapsed := now().Sub(q.start)
	win := int64(elapsed / q.window)
	u, known := q.used[k]
	if u.window != win {
		u = windowUse{window: win}
	}
	if u.n >= q.limit {
		return time.Duration(win+1)*q.window - elapsed, false
	}
	if !known && len(q.used) >= maxKeys {
		q.forget(win)
	}
	u.n++
	q.used[k] = u
	return 0, true
}

// forget drops the counts of past windows, which no longer matter, and, if
// that leaves too many keys, all of them: past maxKeys keys in one window a
// quota lets more requests through rather than grow without bound.
func (q *quota) forget(win int64) {
	for k, u := range q.used {
		if u.window != win {
			delete(q.used, k)
		}
	}
	if len(q.used) >= maxKeys {
		clear(q.used)
	}
}

// refuse answers a request over a quota fault's limit; untilNext is how long
// until the quota lets one through again.
func (f *Fault) refuse(w http.ResponseWriter, untilNext time.Duration) error {
	retryAfter := untilNext
	if f.RetryAfter > 0 {
		retryAfter = time.Duration(f.RetryAfter)
	}
	// At least 1: "Retry-After: 0" would invite the client straight back.
	respond(w, actionQuota, http.StatusTooManyRequests, max(retryAfter, time.Second), f.Body)
	return nil
}

// quotaStats counts the requests that reached a quota: each is either
// passed, let through by every quota it reached, or refused by one.
type quotaStats struct {
	passed, refused atomic.Uint64
}

// serve answers a stats request with the counts as JSON.
func (s *quotaStats) serve(w http.ResponseWriter) error {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	// A client that went away cannot be told anything more.
	_ = json.NewEncoder(w).Encode(struct {
		Passed  uint64 `json:"quota_passed"`
		Refused uint64 `json:"quota_refused"`
	}{s.passed.Load(), s.refused.Load()})
	return nil
}
