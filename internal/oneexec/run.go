// Package oneexec proves "one execution per key" end to end (SPEC §13,
// "Proven, not assumed"): many clients resend keyed POSTs through real
// gateways in front of an upstream that records every execution, with
// faults, slow answers, reloads and Redis restarts drawn from a seed,
// and the check verifies afterwards, from what the upstream did and what
// every client got, that no key was executed twice and that every
// answer is byte for byte the one execution's.
//
// It starts no gateway itself: the fleet's test (fleet/) and the bench
// (S10x) start Caddy processes and Redis their own way, with Route's
// config, and give Run their addresses and the events to play (a
// reload, Redis killed and started again).
package oneexec

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Gateway is one instance the clients send to.
type Gateway struct {
	Name  string // as it names itself to the upstream (HeaderGateway)
	Addr  string // host:port of its site
	Admin string // host:port of its admin endpoint, for its gauges
	// Log is its log file (Caddy's JSON lines), where it says when it
	// stops and starts reaching the fleet's Redis.
	Log string
}

// Event is something done to the gateways mid-run.
type Event struct {
	At   time.Duration // after the load began
	Name string
	Do   func() error
	// Down: from when Do starts, instances may act alone (Redis is
	// killed), until an Up event's Do has returned (Redis answers and
	// every instance is back in the fleet).
	Down, Up bool
}

// Config is one run.
type Config struct {
	Seed     uint64
	Duration time.Duration // of the clients' load
	Clients  int           // concurrent callers
	Gateways []Gateway
	Upstream *Upstream
	Timing   Timing
	// MaxResponse is the gateways' max_response. Default: 1 MiB.
	MaxResponse int
	// Events run on Run's goroutine, in the order of At.
	Events []Event
	// Grace is how long after an execution's end its answer may still be
	// on its way into the records, and how far windows in which an
	// instance acted alone are widened on each side. Default: 1s.
	Grace time.Duration
	// Logf, when set, says what the run is doing.
	Logf func(format string, args ...any)
}

// runner is one run under way.
type runner struct {
	cfg   Config
	block []byte
	pool  pool
	http  *http.Client
}

func (r *runner) gateway(name string) Gateway {
	for _, g := range r.cfg.Gateways {
		if g.Name == name {
			return g
		}
	}
	panic("oneexec: no gateway " + name)
}

func (r *runner) logf(format string, args ...any) {
	if r.cfg.Logf != nil {
		r.cfg.Logf(format, args...)
	}
}

// Run plays the load and the events, lets everything settle, sends
// every logical request once more (the final sweep, the upstream calm),
// and checks. The error is the run's (an event that failed, ctx), not
// the check's: see Report.Violations.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if len(cfg.Gateways) == 0 || cfg.Upstream == nil || cfg.Clients <= 0 || cfg.Duration <= 0 {
		return nil, errors.New("oneexec: a run needs gateways, an upstream, clients and a duration")
	}
	if cfg.MaxResponse == 0 {
		cfg.MaxResponse = 1 << 20
	}
	if cfg.Grace == 0 {
		cfg.Grace = time.Second
	}
	r := &runner{cfg: cfg, block: cfg.Upstream.block, http: &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 256, DisableCompression: true, IdleConnTimeout: 30 * time.Second}}}
	defer r.http.CloseIdleConnections()

	rep := &Report{Seed: cfg.Seed, Gateways: len(cfg.Gateways)}
	start := time.Now()
	end := start.Add(cfg.Duration)
	lctx, stop := context.WithCancel(ctx)
	clients := make([]*client, cfg.Clients)
	var wg sync.WaitGroup
	for i := range clients {
		c := &client{n: i, r: streamOf(cfg.Seed, "client", strconv.Itoa(i)), run: r}
		clients[i] = c
		wg.Go(func() { c.loop(lctx, end) })
	}
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			stop()
			wg.Wait()
		}
	}
	defer halt() // also when an event's Do ends this goroutine (t.Fatal)

	var down time.Time
	events := slices.Clone(cfg.Events)
	slices.SortStableFunc(events, func(a, b Event) int { return int(a.At - b.At) })
	for _, ev := range events {
		if !sleep(ctx, time.Until(start.Add(ev.At))) {
			return nil, ctx.Err()
		}
		r.logf("event %q", ev.Name)
		er := EventRecord{Name: ev.Name, Start: time.Now()}
		if ev.Down {
			down = er.Start
		}
		err := ev.Do()
		er.End = time.Now()
		if err != nil {
			er.Err = err.Error()
		}
		rep.Events = append(rep.Events, er)
		if ev.Up && !down.IsZero() {
			rep.Windows = append(rep.Windows, Window{From: down, To: er.End, Why: "from Redis's kill until every instance was back in the fleet"})
			down = time.Time{}
		}
		if err != nil {
			return nil, fmt.Errorf("event %q: %w", ev.Name, err)
		}
	}
	if !down.IsZero() {
		rep.Windows = append(rep.Windows, Window{From: down, To: time.Now().Add(time.Hour), Why: "Redis killed and not started again"})
	}
	sleep(ctx, time.Until(end))
	r.logf("load over; waiting for the clients")
	halt()
	rep.Load = time.Since(start)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.logf("settling")
	if err := r.settle(ctx); err != nil {
		return nil, err
	}

	// the final sweep: every logical request once more, the upstream calm
	var sends, probes []*Send
	var latencies []time.Duration
	for _, c := range clients {
		sends = append(sends, c.sends...)
		probes = append(probes, c.probes...)
		for _, o := range c.ops {
			rep.Logical++
			latencies = append(latencies, o.end.Sub(o.start))
			if o.last != nil && o.last.answered() && o.last.Header.Get(HeaderExec) != "" {
				rep.Answered++
			}
		}
	}
	rep.Latency = latencyStats(latencies)
	r.logf("final sweep of %d logical requests", len(r.pool.all()))
	cfg.Upstream.setCalm(true)
	swept := r.sweep(ctx)
	cfg.Upstream.setCalm(false)
	sends = append(sends, swept...)
	rep.Sweep = len(swept)
	if err := r.settle(ctx); err != nil {
		return nil, err
	}

	rep.Gauges = map[string]map[string]float64{}
	for _, g := range cfg.Gateways {
		if g.Admin != "" {
			rep.Gauges[g.Name] = readMetrics(ctx, g.Admin)
		}
	}
	windows := slices.Clone(rep.Windows)
	for _, g := range cfg.Gateways {
		ws, err := aloneWindows(g)
		if err != nil {
			return nil, err
		}
		windows = append(windows, ws...)
	}
	for i := range windows {
		windows[i].From = windows[i].From.Add(-cfg.Grace)
		windows[i].To = windows[i].To.Add(cfg.Grace)
	}
	checked := check(checkInput{execs: cfg.Upstream.executions(), sends: sends, probes: probes,
		arrivals: cfg.Upstream.hedgeArrivals(), windows: windows, grace: cfg.Grace, maxResponse: cfg.MaxResponse})
	checked.Seed, checked.Load, checked.Gateways = rep.Seed, rep.Load, rep.Gateways
	checked.Logical, checked.Answered, checked.Latency, checked.Sweep = rep.Logical, rep.Answered, rep.Latency, rep.Sweep
	checked.Events, checked.Gauges = rep.Events, rep.Gauges
	return checked, nil
}

// settle waits until nothing is under way: the upstream holds no
// request and no gateway carries an exchange, then lets the last
// answers reach the records.
func (r *runner) settle(ctx context.Context) error {
	limit := time.Now().Add(r.cfg.Timing.Hang + r.cfg.Timing.CompleteWithin + 10*time.Second)
	for {
		busy := r.cfg.Upstream.busy()
		for _, g := range r.cfg.Gateways {
			if g.Admin != "" && readMetrics(ctx, g.Admin)["caddy_resilient_idempotency_carried"] > 0 {
				busy = true
			}
		}
		if !busy {
			break
		}
		if time.Now().After(limit) {
			return errors.New("oneexec: the upstream or a gateway was still busy long after the load ended")
		}
		if !sleep(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
	if !sleep(ctx, r.cfg.Grace) {
		return ctx.Err()
	}
	return nil
}

// sweep sends every logical request once more, its own body, to a
// gateway drawn from the seed, and waits for each answer as long as it
// takes: each must be the replay of its key's execution (or 409 when
// its answer was not kept, 422 when the key executed with another
// body), or its key's first execution when none acted yet.
func (r *runner) sweep(ctx context.Context) []*Send {
	ops := r.pool.all()
	out := make([]*Send, len(ops))
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range next {
				o := ops[i]
				rs := streamOf(r.cfg.Seed, "sweep", strconv.Itoa(o.id))
				g := r.cfg.Gateways[rs.IntN(len(r.cfg.Gateways))]
				s := &Send{ID: fmt.Sprintf("sweep-%d", o.id), Op: o.id, Key: o.scoped, Gateway: g.Name, Sweep: true, Patience: 30 * time.Second}
				out[i] = r.do(ctx, s, o)
			}
		})
	}
	for i := range ops {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return slices.DeleteFunc(out, func(s *Send) bool { return s == nil })
}

// aloneWindows reads from g's log when it acted alone: from a line
// saying the fleet's Redis does not answer to the next saying it does,
// for the fleet's member and for the idempotency records each (they
// say so each on its own).
func aloneWindows(g Gateway) ([]Window, error) {
	if g.Log == "" {
		return nil, nil
	}
	f, err := os.Open(g.Log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	type pair struct{ down, up string }
	pairs := []pair{
		{"fleet: redis does not answer", "fleet: redis answers again"},
		{"idempotency: the fleet's redis does not answer", "idempotency: the fleet's redis answers again"},
	}
	var out []Window
	open := make([]Window, len(pairs))
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte("redis")) {
			continue
		}
		var e struct {
			TS  float64 `json:"ts"`
			Msg string  `json:"msg"`
		}
		if json.Unmarshal(line, &e) != nil {
			continue
		}
		at := time.Unix(0, int64(e.TS*float64(time.Second)))
		for i, p := range pairs {
			switch {
			case strings.HasPrefix(e.Msg, p.down) && open[i].From.IsZero():
				open[i] = Window{From: at, Why: g.Name + "'s log: " + p.down}
			case strings.HasPrefix(e.Msg, p.up) && !open[i].From.IsZero():
				open[i].To = at
				out = append(out, open[i])
				open[i] = Window{}
			}
		}
	}
	for _, w := range open {
		if !w.From.IsZero() {
			w.To, w.Why = time.Now().Add(time.Hour), w.Why+", and never again that it answers"
			out = append(out, w)
		}
	}
	return out, sc.Err()
}

// readMetrics reads the gauges of a gateway's admin /metrics that the
// report shows.
func readMetrics(ctx context.Context, admin string) map[string]float64 {
	out := map[string]float64{}
	c := &http.Client{Timeout: 2 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	res, err := c.Do(req)
	if err != nil {
		return out
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"caddy_resilient_idempotency_records", "caddy_resilient_idempotency_bytes",
			"caddy_resilient_idempotency_carried", `caddy_resilient_fleet_errors_total{op="idempotency"}`} {
			if rest, ok := strings.CutPrefix(line, name+" "); ok {
				if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
					out[name] = v
				}
			}
		}
	}
	return out
}

func latencyStats(ds []time.Duration) LatencyStats {
	if len(ds) == 0 {
		return LatencyStats{}
	}
	slices.Sort(ds)
	at := func(q float64) float64 {
		k := max(0, min(len(ds)-1, int(math.Ceil(q*float64(len(ds))))-1))
		return float64(ds[k]) / float64(time.Millisecond)
	}
	return LatencyStats{P50: at(0.5), P99: at(0.99), P999: at(0.999), Max: at(1)}
}
