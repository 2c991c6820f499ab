package idempotency

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-resilient/resilient/idempotency/answers"
)

// Long runs (the bench's):
//
//	go test ./idempotency -run TestModel -model.ops 2000000 -model.seed 7
var (
	modelOps  = flag.Int("model.ops", 4000, "operations of each TestModel run")
	modelSeed = flag.Uint64("model.seed", 1, "seed of TestModel")
)

// modelRecord is a key's record as the reference model keeps it.
type modelRecord struct {
	inFlight bool
	fp       Fingerprint
	answer   Answer // as kept: keepable, and cut down when too large
	expires  time.Time
	seq      int   // order of completion: the oldest goes first
	cost     int64 // answer.Size()
}

// model is what a Memory must do, said as plainly as possible: a map of
// records, the bound, the oldest completed record dropped first when a
// new one would pass it, records in flight never dropped.
type model struct {
	recs   map[Key]*modelRecord
	base   int64
	limits map[int64]int
	seq    int
}

func (m *model) bound() int64 {
	if len(m.limits) == 0 {
		return m.base
	}
	b := int64(0)
	for l := range m.limits {
		b = max(b, l)
	}
	return b
}

func (m *model) bytes() (n int64) {
	for _, r := range m.recs {
		if !r.inFlight {
			n += r.cost
		}
	}
	return n
}

func (m *model) dropOldest() bool {
	var oldest *modelRecord
	var key Key
	for k, r := range m.recs {
		if !r.inFlight && (oldest == nil || r.seq < oldest.seq) {
			oldest, key = r, k
		}
	}
	if oldest != nil {
		delete(m.recs, key)
	}
	return oldest != nil
}

// begin is Begin with no wait: what the repeat gets, and the answer.
func (m *model) begin(k Key, fp Fingerprint, now time.Time) (Verdict, *Answer) {
	r := m.recs[k]
	if r != nil && !r.inFlight && !now.Before(r.expires) {
		delete(m.recs, k)
		r = nil
	}
	switch {
	case r == nil:
		m.recs[k] = &modelRecord{inFlight: true}
		return New, nil
	case r.inFlight:
		return InFlight, nil
	case r.fp != fp:
		return Mismatch, nil
	case !r.answer.Whole:
		a := r.answer
		return Used, &a
	}
	a := r.answer
	return Replay, &a
}

// keep completes k's record: a as a record keeps it, else its status and
// header, else its status alone, whichever the store takes first (a
// value longer than maxLen it never takes).
func (m *model) keep(k Key, fp Fingerprint, a Answer, expires time.Time, maxLen int) {
	a = keepable(a)
	tries := []Answer{a}
	if a.Whole {
		tries = append(tries, Answer{Status: a.Status, Header: a.Header, Outcome: a.Outcome})
	}
	tries = append(tries, Answer{Status: a.Status, Outcome: a.Outcome})
	for _, try := range tries {
		cost := try.Size()
		if cost-answers.Overhead > int64(maxLen) {
			continue
		}
		delete(m.recs, k)
		for m.bytes()+cost > m.bound() && m.dropOldest() {
		}
		m.seq++
		m.recs[k] = &modelRecord{fp: fp, answer: try, expires: expires, seq: m.seq, cost: cost}
		return
	}
	panic("not even the status fits")
}

func (m *model) sweep(now time.Time) {
	for k, r := range m.recs {
		if !r.inFlight && !now.Before(r.expires) {
			delete(m.recs, k)
		}
	}
}

// rebound follows a change of the limits held.
func (m *model) rebound(before int64) {
	if m.bound() == before {
		return
	}
	for m.bytes() > m.bound() && m.dropOldest() {
	}
}

// modelClaim is a claim the test holds, and the fingerprint of its
// request.
type modelClaim struct {
	k     Key
	fp    Fingerprint
	ttl   time.Duration
	claim Claim
}

// modelRun drives one Memory and the model with the same operations.
type modelRun struct {
	t      *testing.T
	rnd    *rand.Rand
	clock  *fakeClock
	mem    *Memory
	ref    *model
	claims []modelClaim
	held   []int64 // the limits the test holds
	lets   []func()
	noise  []byte // bodies are slices of it
	op     int
	stats  [2]int64
	log    []string // the last operations, for a failure's message
}

// note records what an operation did, for a failure's message.
func (r *modelRun) note(format string, args ...any) {
	if len(r.log) == 40 {
		r.log = r.log[1:]
	}
	r.log = append(r.log, fmt.Sprintf("op %d: ", r.op)+fmt.Sprintf(format, args...))
}

var modelFps = [...]Fingerprint{{1}, {2}}

// TestModel drives a Memory with random operations (begins of a few dozen
// keys, keeps of answers from empty to past the store's size, many near
// its chunks and its bound, releases, time passing, sweeps, limits held
// and let go, repeats waiting for a first that is kept or released, and
// leaving) under bounds that are no multiple of any chunk, and compares
// every verdict, every byte replayed and every count with the model.
func TestModel(t *testing.T) {
	for i, bound := range []int64{200_003, 1_000_001, 3*64<<10 - 7} {
		t.Run(fmt.Sprint(bound), func(t *testing.T) {
			seed := *modelSeed + uint64(i)
			start := time.Now()
			r := newModelRun(t, bound, seed)
			for r.op = range *modelOps {
				r.step()
			}
			r.end()
			t.Logf("seed %d: %d operations in %s", seed, *modelOps, time.Since(start).Round(time.Millisecond))
		})
	}
}

func newModelRun(t *testing.T, bound int64, seed uint64) *modelRun {
	clock := newClock()
	rnd := rand.New(rand.NewPCG(seed, 13))
	noise := make([]byte, 2<<20)
	for i := range noise {
		noise[i] = byte(rnd.UintN(255)) + 1 // never zero: a page given back shows
	}
	return &modelRun{
		t: t, rnd: rnd, clock: clock, noise: noise, stats: statsNow(),
		// the model sweeps when the test says, and so does the Memory
		mem: newTestMemory(t, Config{TTL: time.Hour, MaxMemory: bound, Clock: clock.now, SweepEvery: -1}),
		ref: &model{recs: map[Key]*modelRecord{}, base: bound, limits: map[int64]int{}},
	}
}

func (r *modelRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("op %d: "+format+"\nthe last operations:\n%s", append(append([]any{r.op}, args...), strings.Join(r.log, "\n"))...)
}

// size picks an answer's body size: mostly small, often near the
// store's chunks, its bound and its longest value.
func (r *modelRun) size() int {
	bound, maxLen := r.ref.bound(), r.mem.kept.MaxLen()
	near := func(n int) int { return max(0, n+r.rnd.IntN(200)-150) }
	switch r.rnd.IntN(10) {
	case 0:
		return near((1 + r.rnd.IntN(4)) * 64 << 10)
	case 1:
		return near(int(bound))
	case 2:
		return near(maxLen)
	case 3:
		return r.rnd.IntN(int(bound))
	default:
		return r.rnd.IntN(3000)
	}
}

// answer makes a random answer, now and then one a record cannot hold.
func (r *modelRun) answer() Answer {
	a := Answer{Status: 200 + r.rnd.IntN(400), Whole: r.rnd.IntN(8) != 0}
	n := r.size()
	if n > len(r.noise) {
		n = len(r.noise)
	}
	off := r.rnd.IntN(len(r.noise) - n + 1)
	a.Body = r.noise[off : off+n]
	switch r.rnd.IntN(20) {
	case 0:
		a.Status, a.Outcome, a.Body = 504, "read_timeout", nil
	case 1:
		a.Header = http.Header{}
		for i := range maxHeaderLines + 1 {
			a.Header.Add("X-Line", fmt.Sprint(i))
		}
	case 2:
		a.Header = http.Header{"Bad Name": {"v"}}
	case 3:
		a.Header = http.Header{"X-Big": {strings.Repeat("h", r.size())}}
	default:
		a.Header = http.Header{"Content-Type": {"application/json"}, "X-Op": {fmt.Sprint(r.op)}}
	}
	return a
}

func (r *modelRun) key() Key { return NewKey(nil, fmt.Sprint(r.rnd.IntN(40))) }

func (r *modelRun) step() {
	switch p := r.rnd.IntN(100); {
	case p < 40:
		r.begin()
	case p < 60 && len(r.claims) > 0:
		r.keep(r.rnd.IntN(len(r.claims)))
	case p < 70 && len(r.claims) > 0:
		r.release(r.rnd.IntN(len(r.claims)))
	case p < 80:
		d := time.Duration(r.rnd.IntN(600)) * time.Second
		r.clock.advance(d)
		r.note("advance %s", d)
	case p < 83:
		r.mem.Sweep()
		r.ref.sweep(r.clock.now())
		r.note("sweep")
	case p < 88:
		r.limit()
	case p < 92 && len(r.claims) > 0:
		r.wait(r.rnd.IntN(len(r.claims)))
	default:
		r.begin()
	}
	r.check()

}

func (r *modelRun) begin() {
	k, fp := r.key(), modelFps[r.rnd.IntN(2)]
	ttl := []time.Duration{0, time.Minute, time.Hour, 24 * time.Hour}[r.rnd.IntN(4)]
	got, err := r.mem.Begin(bg, k, Params{TTL: ttl}, fpOf(fp, nil))
	if err != nil {
		r.fatalf("Begin: %v", err)
	}
	want, answer := r.ref.begin(k, fp, r.clock.now())
	r.note("begin %x fp %d ttl %s: %s", k[:2], fp[0], ttl, got.Verdict)
	r.compare("Begin", got, want, answer)
	if got.Verdict == New {
		if ttl == 0 {
			ttl = time.Hour
		}
		r.claims = append(r.claims, modelClaim{k: k, fp: fp, ttl: ttl, claim: got.Claim})
	}
}

// compare fails the run unless got is the verdict and answer the model
// gave.
func (r *modelRun) compare(what string, got Result, want Verdict, answer *Answer) {
	r.t.Helper()
	if got.Verdict != want {
		r.fatalf("%s: %s, the model says %s", what, got.Verdict, want)
	}
	if (want == Replay || want == Used) && (got.Answer == nil || !reflect.DeepEqual(*got.Answer, *answer)) {
		r.fatalf("%s: %s of %s, the model kept %s", what, want, describe(got.Answer), describe(answer))
	}
}

func describe(a *Answer) string {
	if a == nil {
		return "nothing"
	}
	return fmt.Sprintf("status %d outcome %q, %d header names, %d body bytes, whole %v", a.Status, a.Outcome, len(a.Header), len(a.Body), a.Whole)
}

func (r *modelRun) take(i int) modelClaim {
	c := r.claims[i]
	r.claims = append(r.claims[:i], r.claims[i+1:]...)
	return c
}

func (r *modelRun) keep(i int) {
	c, a := r.take(i), r.answer()
	maxLen := r.mem.kept.MaxLen()
	c.claim.Keep(c.fp, a)
	r.ref.keep(c.k, c.fp, a, r.clock.now().Add(c.ttl), maxLen)
	r.note("keep %x: %s; maxLen %d, bound %d", c.k[:2], describe(&a), maxLen, r.ref.bound())
}

func (r *modelRun) release(i int) {
	c := r.take(i)
	c.claim.Release()
	delete(r.ref.recs, c.k)
	r.note("release %x", c.k[:2])
}

// limit holds a new limit, or lets one go.
func (r *modelRun) limit() {
	before := r.ref.bound()
	if len(r.held) == 0 || r.rnd.IntN(2) == 0 {
		l := int64(50_000 + r.rnd.IntN(1_500_000))
		r.lets = append(r.lets, r.mem.Limit(l))
		r.held = append(r.held, l)
		r.ref.limits[l]++
	} else {
		i := r.rnd.IntN(len(r.held))
		r.lets[i]()
		if r.ref.limits[r.held[i]]--; r.ref.limits[r.held[i]] == 0 {
			delete(r.ref.limits, r.held[i])
		}
		r.lets = append(r.lets[:i], r.lets[i+1:]...)
		r.held = append(r.held[:i], r.held[i+1:]...)
	}
	r.ref.rebound(before)
	r.note("limits %v: bound %d", r.held, r.ref.bound())
}

// wait starts repeats that wait for claim i's request (one of which
// leaves), then ends that claim, and whichever repeat takes the key
// over after a release, until every repeat has its verdict.
func (r *modelRun) wait(i int) {
	c := r.take(i)
	n := 1 + r.rnd.IntN(4)
	r.note("wait %x: %d repeats", c.k[:2], n)
	type waiter struct {
		fp Fingerprint
		ch <-chan outcome
	}
	pending := make([]waiter, n)
	for j := range pending {
		fp := modelFps[r.rnd.IntN(2)]
		pending[j] = waiter{fp, beginAsync(bg, r.mem, c.k, time.Hour, fp)}
	}
	ctx, cancel := context.WithCancel(bg)
	leaving := beginAsync(ctx, r.mem, c.k, time.Hour, c.fp)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Microsecond) {
		if w, _ := waiters(r.mem, c.k); w == n+1 {
			break
		}
		if time.Now().After(deadline) {
			r.fatalf("the repeats are not all waiting after 5s")
		}
	}
	cancel()
	if o := receive(r.t, leaving, 5*time.Second, "the repeat that leaves"); !errors.Is(o.err, context.Canceled) {
		r.fatalf("a waiting repeat whose client left: %s, %v", o.r.Verdict, o.err)
	}
	for len(pending) > 0 {
		if r.rnd.IntN(3) == 0 {
			// released: exactly one repeat takes the key over
			c.claim.Release()
			delete(r.ref.recs, c.k)
			r.note("release %x while repeats wait", c.k[:2])
			var took int = -1
			for took < 0 {
				for j, w := range pending {
					select {
					case o := <-w.ch:
						if o.err != nil || o.r.Verdict != New {
							r.fatalf("after a release a waiting repeat got %s, %v; want new", o.r.Verdict, o.err)
						}
						took, c = j, modelClaim{k: c.k, fp: w.fp, ttl: time.Hour, claim: o.r.Claim} // beginAsync gives no TTL: the default
					default:
					}
					if took >= 0 {
						break
					}
				}
				time.Sleep(50 * time.Microsecond)
			}
			r.ref.recs[c.k] = &modelRecord{inFlight: true}
			pending = append(pending[:took], pending[took+1:]...)
			for _, w := range pending {
				expectNothing(r.t, w.ch, 0, "another waiting repeat")
			}
			continue
		}
		a := r.answer()
		maxLen := r.mem.kept.MaxLen()
		c.claim.Keep(c.fp, a)
		r.ref.keep(c.k, c.fp, a, r.clock.now().Add(c.ttl), maxLen)
		r.note("keep %x while repeats wait: %s; maxLen %d, bound %d", c.k[:2], describe(&a), maxLen, r.ref.bound())
		for _, w := range pending {
			o := receive(r.t, w.ch, 5*time.Second, "a waiting repeat")
			if o.err != nil {
				r.fatalf("a waiting repeat: %v", o.err)
			}
			want, answer := r.ref.begin(c.k, w.fp, r.clock.now())
			r.compare("a waiting repeat", o.r, want, answer)
		}
		return
	}
	r.claims = append(r.claims, c)
}

// check compares the counts: records in flight and completed, and their
// bytes, in the Memory and in the process-wide Stats.
func (r *modelRun) check() {
	r.t.Helper()
	n, b := r.mem.Len()
	if n != len(r.ref.recs) || b != r.ref.bytes() {
		r.fatalf("Len() = %d, %d; the model holds %d records, %d bytes", n, b, len(r.ref.recs), r.ref.bytes())
	}
	if sn, sb := delta(r.stats); sn != int64(n) || sb != b {
		r.fatalf("Stats moved by %d, %d; the Memory holds %d, %d", sn, sb, n, b)
	}
	if r.op%3 != 0 {
		return
	}
	// and, every third operation, one completed record the model holds,
	// as the store holds it (a Get has no effect on a record that has
	// not expired)
	now := r.clock.now()
	for k, rec := range r.ref.recs {
		if rec.inFlight || !now.Before(rec.expires) {
			continue
		}
		enc, _, ok := r.mem.kept.Get(answers.Key(k))
		if !ok {
			r.fatalf("the store lost record %x, which the model holds", k[:2])
		}
		w, err := decodeRecord(enc)
		if err != nil || w.fp != rec.fp || !reflect.DeepEqual(w.answer, rec.answer) {
			r.fatalf("record %x reads %s, %v; the model kept %s", k[:2], describe(&w.answer), err, describe(&rec.answer))
		}
		break
	}
}

// end replays every record the model still holds, and ends every claim.
func (r *modelRun) end() {
	for k, rec := range r.ref.recs {
		if rec.inFlight {
			continue
		}
		got, err := r.mem.Begin(bg, k, Params{}, fpOf(rec.fp, nil))
		if err != nil {
			r.fatalf("at the end: %v", err)
		}
		want, answer := r.ref.begin(k, rec.fp, r.clock.now())
		r.compare("at the end", got, want, answer)
		if got.Claim != nil {
			got.Claim.Release()
			delete(r.ref.recs, k)
		}
	}
	for _, c := range r.claims {
		c.claim.Release()
	}
	for _, let := range r.lets {
		let()
	}
}
