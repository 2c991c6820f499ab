package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// class is the kind of a client request.
type class uint8

const (
	classGet     class = iota
	classPost          // POST without Idempotency-Key
	classPostKey       // POST with Idempotency-Key
)

// idPrefix marks a request id with its class, so the upstream's
// records can be split the same way as the client's samples.
var idPrefix = [...]string{classGet: "g", classPost: "n", classPostKey: "k"}

// loadSpec is how the load generator drives one run.
type loadSpec struct {
	// Closed runs Concurrency workers back to back (max throughput);
	// otherwise requests start at Rate per second whatever happens to
	// the earlier ones (open loop).
	Closed      bool
	Concurrency int
	Rate        float64
	Duration    time.Duration
	// Timeout is the client's patience per request, counted from its
	// intended send time.
	Timeout time.Duration
	// Mix picks the class of the i-th request. Default: every one a GET.
	Mix func(i int) class
	// Route picks the path the i-th request goes to, before its id.
	// Default: /api/.
	Route func(i int) string
	// Requests, when set, ends a closed loop after that many requests,
	// or at Duration if that comes first (S10m).
	Requests int
	// Resend makes each request a logical one, which the client sends
	// again when it gives up on an answer (S10); Timeout then bounds all
	// of its sends.
	Resend *resend
	// Reads makes each request a GET of a target shared with others,
	// for one of several callers, whose answer the client checks (S13);
	// Mix and Route do not apply.
	Reads *reads
}

// sample is one client request.
type sample struct {
	ID       string
	Class    class
	Intended time.Duration // since the run started; the latency counts from here
	Done     time.Duration // since the run started
	Latency  time.Duration
	// Lag is how late the generator sent the request after its intended
	// time: its own scheduling, not the proxy's doing. Latency includes it.
	Lag      time.Duration
	Status   int    // 0: no response (transport error, client timeout)
	Outcome  string // X-Resilient-Outcome, when the proxy sets it
	Attempts int    // X-Resilient-Attempts, -1 when absent
	Route    string // the path before the id
	Gateway  int    // which of the targets it was sent to
	// with Resend: how many times it was sent, how many sends were
	// answered 409, and whether its last answer was a replay
	// (Idempotent-Replayed: true)
	Sends     int
	Conflicts int
	Replayed  bool
	// with Reads: what the answer was made for, and when
	Read *readSeen
}

// ok reports whether s was answered 2xx, and, for a read, with the
// answer made for it.
func (s *sample) ok() bool {
	return s.Status >= 200 && s.Status < 300 && (s.Read == nil || !s.Read.Crossed && !s.Read.Wrong)
}

// client builds the generator's HTTP client: keep-alive, no
// compression, no proxy from the environment, enough idle connections
// for the concurrency.
func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}}
}

// generate drives load at targets (host:port; request i goes to the
// (i mod n)-th, round robin) as spec says, from start on, and returns the
// samples, the start time, and how long sending lasted.
func generate(ctx context.Context, targets []string, spec loadSpec, start time.Time) ([]sample, time.Time, time.Duration) {
	c := newClient()
	defer c.CloseIdleConnections()
	if spec.Mix == nil {
		spec.Mix = func(int) class { return classGet }
	}
	if spec.Route == nil {
		spec.Route = func(int) string { return "/api/" }
	}
	if spec.Closed {
		if d := time.Until(start); d > 0 {
			time.Sleep(d)
		}
		return closedLoop(ctx, c, targets, spec)
	}
	return openLoop(ctx, c, targets, spec, start)
}

// openLoop starts request i at start + i/rate. Its latency counts from
// that intended time, so a proxy that stalls is charged for the whole
// stall (no coordinated omission).
//
// Go's timers sleep in whole milliseconds on Linux (the netpoller's
// epoll timeout), so the dispatcher wakes up to 1ms before a request is
// due and sends it then: a request sent early has its latency counted
// from when it was sent instead, and one sent late from when it was due.
func openLoop(ctx context.Context, c *http.Client, targets []string, spec loadSpec, start time.Time) ([]sample, time.Time, time.Duration) {
	n := int(spec.Rate * spec.Duration.Seconds())
	samples := make([]sample, n)
	interval := float64(time.Second) / spec.Rate
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var wg sync.WaitGroup
	sent := 0
dispatch:
	for i := range n {
		intended := start.Add(time.Duration(float64(i) * interval))
		if d := time.Until(intended) - time.Millisecond; d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break dispatch
			}
		}
		sent++
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples[i] = spec.do(ctx, c, targets, i, start, intended)
		}()
	}
	elapsed := time.Since(start)
	wg.Wait()
	return samples[:sent], start, elapsed
}

// closedLoop runs Concurrency workers, each sending its next request as
// soon as the previous one is answered, for Duration.
func closedLoop(ctx context.Context, c *http.Client, targets []string, spec loadSpec) ([]sample, time.Time, time.Duration) {
	start := time.Now()
	end := start.Add(spec.Duration)
	per := make([][]sample, spec.Concurrency)
	var next atomic.Int64 // with Requests: the next request's index
	var wg sync.WaitGroup
	for w := range spec.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]sample, 0, 1<<14)
			for i := w; ctx.Err() == nil; i += spec.Concurrency {
				if spec.Requests > 0 {
					if i = int(next.Add(1) - 1); i >= spec.Requests {
						break
					}
				}
				now := time.Now()
				if !now.Before(end) {
					break
				}
				out = append(out, spec.do(ctx, c, targets, i, start, now))
			}
			per[w] = out
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []sample
	for _, p := range per {
		all = append(all, p...)
	}
	return all, start, elapsed
}

// postPad makes an order body of about 256 bytes.
var postPad = strings.Repeat("p", 200)

// do sends request i and waits for its whole answer; with Resend, it
// is a logical request, sent until it gets one.
func (spec *loadSpec) do(ctx context.Context, c *http.Client, targets []string, i int, start, intended time.Time) sample {
	s := spec.newSample(targets, i, start, intended)
	ctx, cancel := context.WithDeadline(ctx, intended.Add(spec.Timeout))
	defer cancel()
	switch {
	case spec.Resend != nil:
		spec.Resend.run(ctx, c, &s, targets, start, intended)
		return s
	case spec.Reads != nil:
		spec.Reads.run(ctx, c, &s, i, targets, start, intended)
		return s
	}
	from := s.sent(intended)
	if res, err := send(c, newRequest(ctx, targets, &s)); res != nil {
		if err == nil {
			s.Status = res.StatusCode
		}
		s.setOutcome(res.Header)
	}
	s.done(start, from)
	return s
}

// sent notes how late s is sent after its intended time, and returns
// when its latency counts from: the generator's timers wake up to 1ms
// early (see openLoop), and a request sent early counts from its send.
func (s *sample) sent(intended time.Time) time.Time {
	now := time.Now()
	s.Lag = max(0, now.Sub(intended))
	if now.Before(intended) {
		return now
	}
	return intended
}

// done notes that s ended now; its latency counts from from.
func (s *sample) done(start, from time.Time) {
	now := time.Now()
	s.Done = now.Sub(start)
	s.Latency = now.Sub(from)
}

func (spec *loadSpec) newSample(targets []string, i int, start, intended time.Time) sample {
	cl := spec.Mix(i)
	return sample{ID: idPrefix[cl] + strconv.Itoa(i), Class: cl, Intended: intended.Sub(start), Attempts: -1,
		Route: spec.Route(i), Gateway: i % len(targets)}
}

// newRequest builds the request of sample s: a GET, or a POST whose
// body names its order, with or without an Idempotency-Key.
func newRequest(ctx context.Context, targets []string, s *sample) *http.Request {
	var req *http.Request
	var err error
	url := "http://" + targets[s.Gateway] + s.Route + s.ID
	if s.Class == classGet {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	} else {
		body := "order=" + s.ID + "&amount=100&pad=" + postPad
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	}
	if err != nil {
		panic(fmt.Sprintf("bench: build request: %v", err))
	}
	req.Header.Set("X-Bench-Id", s.ID)
	if s.Class == classPostKey {
		req.Header.Set("Idempotency-Key", "key-"+s.ID)
	}
	return req
}

// send sends req and reads its whole answer; an answer whose body
// breaks off comes with the error.
func send(c *http.Client, req *http.Request) (*http.Response, error) {
	res, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res, err
}

// setOutcome reads the resilient setups' outcome headers.
func (s *sample) setOutcome(h http.Header) {
	s.Outcome = h.Get("X-Resilient-Outcome")
	if a, err := strconv.Atoi(h.Get("X-Resilient-Attempts")); err == nil {
		s.Attempts = a
	}
}
