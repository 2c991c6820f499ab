package oneexec

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The clients: each sends logical requests (a key, a body) through the
// gateways and sends them again as impatient clients do: after a
// timeout of their own, a 409, a 502/504 that may have been executed, a
// refusal; at once or later; to the same gateway or another; sometimes
// several at once (a double click), sometimes with another body (a
// client bug, which must get 422 and never another request's answer),
// sometimes quoted ("k" is k), and some keys again long after.

// Send is one HTTP request of a client, and what it got.
type Send struct {
	ID      string // HeaderSend
	Op      int    // the logical request it belongs to
	Key     string // keyOf of its Authorization and key
	Body    [32]byte
	BodyLen int
	Variant int // 0: the logical request's body; else another body with the same key
	Gateway string
	Sweep   bool // sent by the final sweep

	Start, End time.Time
	Deadline   time.Duration // the X-Request-Timeout it carried, 0 for none
	Patience   time.Duration

	Err       string // no answer, or an answer cut short
	Status    int
	Header    http.Header
	Answer    [32]byte
	AnswerLen int
}

// answered reports whether the send got an answer read whole.
func (s *Send) answered() bool { return s.Err == "" && s.Status != 0 }

// op is a logical request: one key in one scope, one body.
type op struct {
	id     int
	auth   string
	key    string
	scoped string
	size   int
	done   bool // in the pool's done list (under its lock)
}

// body returns the request body of op's variant: variant 0 is the
// logical request's own; another is one byte longer, so it always
// differs, empty bodies included.
func (o *op) body(block []byte, variant int) []byte {
	n := o.size + min(variant, 1)
	b := make([]byte, n)
	k := copy(b, fmt.Sprintf("op %d %s variant %d\n", o.id, o.scoped, variant))
	off := (o.id*104729 + variant*31) % (len(block) - n + 1)
	copy(b[k:], block[off:])
	return b
}

// opRecord is what became of a logical request.
type opRecord struct {
	op    *op
	start time.Time
	end   time.Time
	last  *Send // its last answer
	sends int
}

// pool holds the logical requests done so far, for the clients to come
// back to, and for the final sweep.
type pool struct {
	mu   sync.Mutex
	done []*op
	byID map[int]*op
	next int
}

func (p *pool) newOp(auth, key string, size int) *op {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := &op{id: p.next, auth: auth, key: key, scoped: keyOf(auth, key), size: size}
	p.next++
	if p.byID == nil {
		p.byID = map[int]*op{}
	}
	p.byID[o.id] = o
	return o
}

func (p *pool) finished(o *op) {
	p.mu.Lock()
	if !o.done {
		o.done = true
		p.done = append(p.done, o)
	}
	p.mu.Unlock()
}

// pick returns a finished logical request at random, nil when none.
func (p *pool) pick(r *rand.Rand) *op {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.done) == 0 {
		return nil
	}
	return p.done[r.IntN(len(p.done))]
}

// all returns every logical request made, in order.
func (p *pool) all() []*op {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*op, 0, len(p.byID))
	for i := range p.next {
		out = append(out, p.byID[i])
	}
	return out
}

// tenants are the callers: each key is per caller (the gateway's scope).
var tenants = []string{"Bearer tenant-a", "Bearer tenant-b", "Bearer tenant-c", "Bearer tenant-d"}

// client is one simulated caller goroutine.
type client struct {
	n      int
	r      *rand.Rand
	run    *runner
	sends  []*Send
	ops    []opRecord
	probes []*Send // GETs of the hedge probe
	count  int     // keys it made
	next   int     // sends it made
}

// loop sends logical requests until the load's end.
func (c *client) loop(ctx context.Context, end time.Time) {
	for time.Now().Before(end) && ctx.Err() == nil {
		if c.r.Float64() < 0.06 {
			c.probe(ctx)
			continue
		}
		var o *op
		switch p := c.r.Float64(); {
		case p < 0.15:
			o = c.run.pool.pick(c.r) // a key seen before, maybe long ago
		case p < 0.22:
			// a key name another caller used: another key
			if prev := c.run.pool.pick(c.r); prev != nil {
				auth := tenants[c.r.IntN(len(tenants))]
				for auth == prev.auth {
					auth = tenants[c.r.IntN(len(tenants))]
				}
				o = c.run.pool.newOp(auth, prev.key, requestSize(c.r))
			}
		}
		if o == nil {
			c.count++
			o = c.run.pool.newOp(tenants[c.r.IntN(len(tenants))], fmt.Sprintf("key-%d-%d", c.n, c.count), requestSize(c.r))
		}
		c.logical(ctx, o, end)
		if ctx.Err() == nil {
			c.run.pool.finished(o)
		}
		if !sleep(ctx, between(c.r, 0, 50*time.Millisecond)) {
			return
		}
	}
}

// logical sends o's key until an answer that ends it, as a client that
// repeats on timeouts and refusals would, and sometimes once more.
func (c *client) logical(ctx context.Context, o *op, end time.Time) {
	rec := opRecord{op: o, start: time.Now()}
	defer func() {
		rec.end = time.Now()
		c.ops = append(c.ops, rec)
	}()
	if c.r.Float64() < 0.12 {
		// a double click: two or three at once, to different gateways
		n := 2 + c.r.IntN(2)
		got := make([]*Send, n)
		var wg sync.WaitGroup
		first := c.r.IntN(len(c.run.cfg.Gateways))
		for i := range n {
			s := c.prepare(o, 0, (first+i)%len(c.run.cfg.Gateways))
			wg.Go(func() { got[i] = c.run.do(ctx, s, o) })
		}
		wg.Wait()
		c.sends = append(c.sends, got...)
		rec.sends += n
		rec.last = got[0]
	}
	tries := 1 + c.r.IntN(6)
	for i := 0; i < tries && ctx.Err() == nil && time.Now().Before(end.Add(5*time.Second)); i++ {
		variant := 0
		if c.r.Float64() < 0.03 {
			variant = 1
		}
		s := c.run.do(ctx, c.prepare(o, variant, c.r.IntN(len(c.run.cfg.Gateways))), o)
		c.sends = append(c.sends, s)
		rec.sends++
		if variant == 0 {
			rec.last = s
		}
		wait, again := c.again(s)
		if !again {
			if c.r.Float64() < 0.75 {
				return
			}
			wait = between(c.r, 0, time.Second) // once more, answered or not
		}
		if !sleep(ctx, wait) {
			return
		}
	}
}

// again says whether a client repeats after s, and when.
func (c *client) again(s *Send) (time.Duration, bool) {
	if !s.answered() {
		return between(c.r, 0, 300*time.Millisecond), true
	}
	switch s.Status {
	case http.StatusConflict, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		ra, err := strconv.Atoi(s.Header.Get("Retry-After"))
		if s.Status == http.StatusConflict && err != nil {
			return 0, false // used: repeating gives the same
		}
		return min(time.Duration(max(ra, 0))*time.Second, time.Second) + between(c.r, 0, 100*time.Millisecond), true
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		if s.Header.Get(HeaderExec) == "" && s.Header.Get("Idempotent-Replayed") == "" {
			return between(c.r, 0, 300*time.Millisecond), true
		}
	}
	return 0, false
}

// prepare makes a send of o's variant to gateway g: its own id, patience
// and, most of the time, a caller deadline.
func (c *client) prepare(o *op, variant, g int) *Send {
	c.next++
	s := &Send{ID: fmt.Sprintf("c%d-%d", c.n, c.next), Op: o.id, Key: o.scoped, Variant: variant,
		Gateway: c.run.cfg.Gateways[g].Name, Patience: between(c.r, c.run.cfg.Timing.Patience[0], c.run.cfg.Timing.Patience[1])}
	if c.r.Float64() < 0.7 {
		s.Deadline = between(c.r, c.run.cfg.Timing.Deadline[0], c.run.cfg.Timing.Deadline[1]).Round(time.Millisecond)
	}
	return s
}

// probe sends a GET that the gateway hedges when its first arrival is
// slow.
func (c *client) probe(ctx context.Context) {
	g := c.run.cfg.Gateways[c.r.IntN(len(c.run.cfg.Gateways))]
	s := &Send{ID: fmt.Sprintf("c%d-get-%d", c.n, len(c.probes)), Gateway: g.Name, Start: time.Now()}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+g.Addr+PathHedge, nil)
	req.Header.Set(HeaderSend, s.ID)
	res, err := c.run.http.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		s.Status = res.StatusCode
	}
	if err != nil {
		s.Err = err.Error()
	}
	s.End = time.Now()
	c.probes = append(c.probes, s)
}

// do sends s, a POST with o's key, and reads its answer whole.
func (r *runner) do(ctx context.Context, s *Send, o *op) *Send {
	g := r.gateway(s.Gateway)
	body := o.body(r.block, s.Variant)
	s.Body, s.BodyLen = sha256.Sum256(body), len(body)
	rctx, cancel := context.WithTimeout(ctx, s.Patience)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, "http://"+g.Addr+PathKeyed, bytes.NewReader(body))
	if err != nil {
		s.Err = err.Error()
		return s
	}
	key := o.key
	if streamOf(r.cfg.Seed, "quote", s.ID).IntN(5) == 0 {
		key = `"` + key + `"` // a Structured Field string: the same key
	}
	req.Header.Set("Authorization", o.auth)
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(HeaderSend, s.ID)
	if s.Deadline > 0 {
		req.Header.Set("X-Request-Timeout", s.Deadline.String())
	}
	s.Start = time.Now()
	res, err := r.http.Do(req)
	if err != nil {
		s.Err, s.End = err.Error(), time.Now()
		return s
	}
	h := sha256.New()
	n, err := io.Copy(h, res.Body)
	res.Body.Close()
	s.End = time.Now()
	s.Status, s.Header = res.StatusCode, res.Header
	copy(s.Answer[:], h.Sum(nil))
	s.AnswerLen = int(n)
	if err != nil {
		s.Err = "answer cut: " + err.Error()
	}
	return s
}

// sleep waits d, or less if ctx ends first; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
