package resilient

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Hedge sends a second copy of a slow request (SPEC §14): when the first
// attempt has no response headers after After, another attempt starts,
// to the same upstream, and the first answer that is not a failure in
// retry.on wins; the others are canceled. Only requests whose method is
// in retry.methods are hedged, with no body or one wholly received and
// kept within max_body, and only their first attempt. Every hedge asks
// the breaker, takes a connection slot and a rate-limit token without
// waiting, and passes the retry budget like a retry; when any of them
// refuses, the first attempt goes on alone. Off unless configured.
type Hedge struct {
	// When to hedge: a percentile (`p50` … `p99.9`) of the upstream's
	// times to response headers over the last 10s, or a duration
	// (`200ms`). With a percentile, nothing is hedged before 20 samples.
	// Default: `p95`.
	After string `json:"after,omitempty"`

	// With a percentile, never sooner than this. Default: `10ms`.
	Min caddy.Duration `json:"min,omitempty"`

	// Extra attempts in flight at once, 1 to 3: another starts after each
	// further After. Default: `1`.
	Max int `json:"max,omitempty"`

	quantile float64       // 0: a fixed delay
	delay    time.Duration // the fixed delay
}

const (
	defaultHedgeMin = 10 * time.Millisecond
	maxHedges       = 3
)

// parseAfter reads `after`: a percentile (its quantile) or a duration.
func parseAfter(s string) (q float64, d time.Duration, err error) {
	if rest, ok := strings.CutPrefix(s, "p"); ok {
		f, perr := strconv.ParseFloat(rest, 64)
		if perr != nil || !(f >= 50 && f <= 99.9) {
			return 0, 0, fmt.Errorf("after: %q is not a percentile from p50 to p99.9", s)
		}
		return f / 100, 0, nil
	}
	d, perr := caddy.ParseDuration(s)
	if perr != nil || d <= 0 {
		return 0, 0, fmt.Errorf("after must be a percentile such as p95 or a positive duration such as 200ms, got %q", s)
	}
	return 0, d, nil
}

func (h *Hedge) provision() error {
	if h.After == "" {
		h.After = "p95"
	}
	q, d, err := parseAfter(h.After)
	if err != nil {
		return err
	}
	h.quantile, h.delay = q, d
	switch {
	case h.Min < 0:
		return fmt.Errorf("min must be a duration >= 0, got %v", time.Duration(h.Min))
	case h.Min != 0 && q == 0:
		return fmt.Errorf("min applies to a percentile only: after %s is a duration", h.After)
	case h.Min == 0 && q != 0:
		h.Min = caddy.Duration(defaultHedgeMin)
	}
	if h.Max == 0 {
		h.Max = 1
	}
	if h.Max < 1 || h.Max > maxHedges {
		return fmt.Errorf("max must be a whole number from 1 to %d, got %d", maxHedges, h.Max)
	}
	return nil
}

// hedgeDelay returns how long attempt a of ex may go without response
// headers before it is hedged; ok is false when it is not to be hedged:
// a retry, a request whose method is not idempotent, or one whose body
// cannot be kept whole.
func (ex *exchange) hedgeDelay(a *attempt) (time.Duration, bool) {
	h := ex.t.Hedge
	if h == nil || a != &ex.first || ex.idem != idemMethod || ex.keyed != nil || (ex.body != nil && !ex.body.replayable()) {
		return 0, false
	}
	d := h.delay
	if h.quantile > 0 {
		q, ok := ex.up.latency.quantile(time.Now(), h.quantile)
		if !ok {
			return 0, false // too few samples yet
		}
		d = max(q, time.Duration(h.Min))
	}
	if totalAt := ex.totalDeadline(); !totalAt.IsZero() && time.Until(totalAt) <= d {
		return 0, false
	}
	return d, true
}

// errHedgeLost cancels the attempts that lost a hedged race.
var errHedgeLost = errors.New("another attempt of the request answered first")

// hedging is the race of an exchange's first attempt with its hedges.
// Its timer is an entry of the process-wide scheduler, so a request that
// is never hedged pays for no goroutine and no runtime timer, only this
// struct. A hedge runs on a goroutine of its own; the first
// attempt stays on the request's.
//
// Every attempt that reached the upstream is counted once, with the
// request: the one the request goes on with by the loop of
// exchange.run, the others here. So the race is over only once every
// hedge's round trip has ended, and its try is known.
type hedging struct {
	timer schedSlot // guarded by the scheduler's lock
	ex    *exchange
	first *attempt
	every time.Duration // between hedges

	mu       sync.Mutex
	racing   bool // the first attempt is under way: hedges may start
	decided  bool // the race is over: every attempt still under way lost
	winner   *hedgeRun
	lastFail *hedgeRun  // the latest hedge that failed on its own
	sending  []*attempt // the hedges whose round trip is under way
	lost     []try      // the hedges not used that reached the upstream
	launched int
	inflight int           // hedges whose round trip has not ended
	sent     bool          // some hedge may have reached the upstream
	wake     chan struct{} // a hedge ended; made with the first hedge
}

// hedgeRun is one hedge.
type hedgeRun struct {
	a     *attempt
	res   *http.Response
	at    *attemptResult
	share share
	tok   token // the rate-limit token it took
	start time.Time
}

func (h *hedging) slot() *schedSlot { return &h.timer }

// fire implements timed: the first attempt is still without an answer.
func (h *hedging) fire() { go h.launch() }

// hedged makes the first attempt a of ex, with ticket tk, hedged after
// delay; it returns the result the request goes on with: the first
// answer that is not a failure in retry.on, or else the last failure.
// The tries of the other attempts that reached the upstream are the
// request's too: they are added to its tries here.
func (ex *exchange) hedged(a *attempt, tk *ticket, delay time.Duration) (*http.Response, *attemptResult) {
	h := &hedging{ex: ex, first: a, every: delay, racing: true}
	ex.hedge = h
	// Caddy's transport sets the URL's scheme on the request it is
	// given, which every attempt shares: set it before any runs, so that
	// attempts in flight at once only read it
	ex.t.HTTPTransport.SetScheme(ex.req)
	// the timer is set once the attempt holds its slot (see send)
	res, at := ex.attempt(a, tk)
	sched.set(h, time.Time{})
	h.mu.Lock()
	h.racing = false
	if h.launched == 0 {
		h.mu.Unlock()
		return res, at
	}
	var losers []*attempt
	var old *hedgeRun
	if !h.decided && ((res != nil && !ex.retryable(at)) || h.inflight == 0) {
		// the first attempt's answer is used: the hedges lose
		h.decided, losers = true, slices.Clone(h.sending)
		old, h.lastFail = h.lastFail, nil
		h.lose(old)
	}
	h.mu.Unlock()
	for _, l := range losers {
		l.loseRace()
	}
	if old != nil {
		ex.letGo(old)
	}
	// The first attempt failed while hedges are under way: the first of
	// them to answer wins; when they all fail, the last failure is the
	// request's. Then every hedge's round trip ends (the losers are
	// canceled), so that their tries are known.
	h.mu.Lock()
	for !h.decided || h.inflight > 0 {
		h.mu.Unlock()
		<-h.wake
		h.mu.Lock()
		if !h.decided && h.inflight == 0 {
			h.decided, h.winner, h.lastFail = true, h.lastFail, nil
		}
	}
	w, lost := h.winner, h.lost
	ex.sent = ex.sent || h.sent
	h.mu.Unlock()
	if w != nil {
		res, at = ex.tookHedge(res, at, w)
	}
	for _, t := range lost {
		ex.tries = append(ex.tries, t)
		ex.up.m.attempt(t.outcome)
	}
	ex.hedges += len(lost)
	return res, at
}

// sends notes that hedge a, its watchdog armed, starts its round trip:
// from now on it is canceled when another attempt wins. One that starts
// after the race was decided is canceled at once, and so never leaves.
func (h *hedging) sends(a *attempt) {
	h.mu.Lock()
	decided := h.decided
	if !decided {
		h.sending = append(h.sending, a)
	}
	h.mu.Unlock()
	if decided {
		a.loseRace()
	}
}

// reached reports whether attempt result at may have reached the
// upstream, for an attempt of a hedged race: one that put no byte of its
// request on the wire (canceled before it went out, its connection
// refused, no time left) did not, and is no attempt.
func reached(at *attemptResult) bool {
	return at.admitted && !at.neverSent
}

// lose keeps the try of hedge r, which lost, when it reached the
// upstream. Called with h.mu held; r may be nil.
func (h *hedging) lose(r *hedgeRun) {
	if r == nil || !reached(r.at) {
		return
	}
	at := r.at
	t := tryOf(at, true)
	t.hedge = true
	h.lost = append(h.lost, t)
}

// tookHedge ends the race with hedge w's result, an answer that won or
// the last failure: the first attempt's (res, at) is let go, and logged
// as a try of its own. The hedge won when its answer is the one used;
// a failure with no answer (a timeout, the client gone) lost like the
// others, and one that never reached the upstream is no attempt.
func (ex *exchange) tookHedge(res *http.Response, at *attemptResult, w *hedgeRun) (*http.Response, *attemptResult) {
	if res != nil {
		ex.dropLoser(res, at)
	}
	counted := reached(at)
	ex.tries = append(ex.tries, tryOf(at, counted))
	if counted {
		ex.up.m.attempt(at.outcome)
	}
	ex.hedges++
	if w.res != nil {
		ex.up.m.hedged(hedgeWon)
	} else {
		ex.up.m.hedged(hedgeLost)
	}
	w.at.admitted = reached(w.at)
	ex.settleHedge(w)
	return w.res, w.at
}

// launch starts a hedge, if the race is still on and everything the
// hedge needs lets it through at once.
func (h *hedging) launch() {
	ex := h.ex
	cfg := ex.t.Hedge
	h.mu.Lock()
	if !h.racing || h.decided || h.launched >= cfg.Max {
		h.mu.Unlock()
		return
	}
	if timeUp(ex.totalDeadline(), time.Now()) {
		// the request's time is all but over: nothing more is sent
		h.launched = cfg.Max
		h.mu.Unlock()
		return
	}
	var kept []byte
	if ex.body != nil {
		var ok bool
		if kept, ok = ex.body.snapshot(); !ok {
			h.mu.Unlock()
			return // the body is not all here: the request is not hedged
		}
	}
	h.launched++
	h.inflight++
	more := h.launched < cfg.Max
	if h.wake == nil {
		h.wake = make(chan struct{}, 1)
	}
	r := &hedgeRun{a: new(attempt), start: time.Now()}
	r.a.hedge, r.a.kept = true, kept
	h.mu.Unlock()

	tk, ok := ex.admitHedge(r)
	if !ok {
		ex.up.m.hedged(hedgeDenied)
		h.mu.Lock()
		h.inflight--
		h.launched = cfg.Max // no other hedge for this request
		h.mu.Unlock()
		signal(h.wake)
		return
	}
	if more {
		sched.set(h, time.Now().Add(h.every))
	}
	res, at := ex.send(r.a, tk, r.start)
	h.finish(r, res, at)
}

// admitHedge asks what every attempt needs, without waiting: the
// breaker, a connection slot, the retry budget and a rate-limit token,
// the token last, so that a hedge refused takes none. When one refuses,
// what the others gave is given back.
func (ex *exchange) admitHedge(r *hedgeRun) (*ticket, bool) {
	tk, _, ok := ex.up.breaker.allow(&r.a.tk)
	if !ok {
		return nil, false
	}
	if !ex.up.takeSlotNow() {
		tk.report(false, true)
		return nil, false
	}
	now := time.Now()
	if r.share, ok = ex.up.budget.allow(now); ok && ex.bkt != nil {
		if r.tok, _, ok = ex.bkt.take(now, 0); !ok {
			ex.up.budget.giveBack(r.share)
		}
	}
	if !ok {
		ex.up.freeSlot()
		tk.report(false, true)
		return nil, false
	}
	return tk, true
}

// finish ends hedge r with (res, at): it wins when nothing else did and
// its answer is not a failure in retry.on; it loses when the race was
// decided meanwhile; else it failed, and is kept as the latest failure.
// Whoever waits for the race is woken before a loser's answer is
// drained.
func (h *hedging) finish(r *hedgeRun, res *http.Response, at *attemptResult) {
	ex := h.ex
	usable := res != nil && !ex.retryable(at)
	var first *attempt
	var losers []*attempt
	var old *hedgeRun
	h.mu.Lock()
	r.res, r.at = res, at
	h.inflight--
	h.sending = slices.DeleteFunc(h.sending, func(a *attempt) bool { return a == r.a })
	h.sent = h.sent || !at.neverSent
	switch {
	case h.decided:
		old = r
	case usable:
		h.decided, h.winner = true, r
		first, losers = h.first, slices.Clone(h.sending)
		old, h.lastFail = h.lastFail, nil
	default:
		old, h.lastFail = h.lastFail, r
	}
	h.lose(old)
	h.mu.Unlock()
	if first != nil {
		first.loseRace()
	}
	for _, a := range losers {
		a.loseRace()
	}
	signal(h.wake)
	if old != nil {
		ex.letGo(old)
	}
}

// letGo lets go of a hedge whose result is not used: its answer, if
// any, is dropped unread.
func (ex *exchange) letGo(r *hedgeRun) {
	ex.up.m.hedged(hedgeLost)
	if r.res != nil {
		ex.dropLoser(r.res, r.at)
	}
	ex.settleHedge(r)
}

// settleHedge gives back what hedge r took and did not use up: the
// budget's share unless it failed on its own (a canceled loser counts
// for neither the breaker, which was told so, nor the budget), and the
// rate-limit token of one that never reached the upstream.
func (ex *exchange) settleHedge(r *hedgeRun) {
	sent := reached(r.at)
	if !sent || r.at.outcome == OutcomeCanceled || (r.res != nil && !ex.retryable(r.at)) {
		ex.up.budget.giveBack(r.share)
	}
	if !sent {
		r.tok.cancel()
	}
}

// dropLoser lets go of the answer of an attempt that lost the race:
// the attempt is canceled first, so a body the upstream stalls is
// never waited for (its connection is not reused).
func (ex *exchange) dropLoser(res *http.Response, at *attemptResult) {
	at.a.w.abort(errHedgeLost)
	ex.letGoNow(res, at)
}

// retryable reports whether at ended in a failure that retry.on names:
// an answer that is not one loses a hedged race to one that is.
func (ex *exchange) retryable(at *attemptResult) bool {
	return at.outcome != OutcomeOK && at.outcome != OutcomeUpstreamStatus || ex.t.Retry.matches(at.outcome, at.status)
}

// signal wakes whoever waits on ch, without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// hedgeOptions are the options of the hedge block.
var hedgeOptions = []string{"after", "min", "max"}

func parseHedge(d *caddyfile.Dispenser) (*Hedge, error) {
	h := new(Hedge)
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "after":
			v, err := oneArg(d, "hedge", opt)
			if err != nil {
				return err
			}
			if _, _, perr := parseAfter(v); perr != nil {
				return d.Errf("hedge: %v", perr)
			}
			h.After = v
		case "min":
			h.Min, err = duration(d, "hedge", opt, false)
		case "max":
			h.Max, err = integer(d, "hedge", opt, 1, maxHedges)
		default:
			return unknownOption(d, "hedge", opt, hedgeOptions)
		}
		return err
	})
	if err == nil && h.Min != 0 && h.After != "" && !strings.HasPrefix(h.After, "p") {
		return nil, d.Errf("hedge: min applies to a percentile only: after %s is a duration", h.After)
	}
	return h, err
}
