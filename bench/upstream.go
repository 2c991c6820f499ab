package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// faults is how the upstream misbehaves; the zero value is healthy.
// Probabilities are drawn per arrival, so a retried request meets them
// again, independently.
type faults struct {
	// Status answers every request with this status (S7).
	Status int
	// P503 answers this share of arrivals with 503 (S1, S5).
	P503 float64
	// PReset reads the body of this share of POST arrivals, then resets
	// the connection without answering (S5): the order was received.
	PReset float64
	// P429 answers this share of request ids with 429 and Retry-After on
	// their first arrival only (S6).
	P429       float64
	RetryAfter time.Duration
	// Delay holds every answer this long (S4, S11).
	Delay time.Duration
	// DelaySpread adds to Delay a wait drawn per arrival, uniformly from
	// 0 to DelaySpread (S10).
	DelaySpread time.Duration
	// PSlow holds this share of arrivals Slow instead (S11): a second
	// copy of a slow request draws again, and is usually fast.
	PSlow float64
	Slow  time.Duration
	// Hang accepts requests and never answers (S3).
	Hang bool
	// BodySize makes a 200's body this many bytes (S10m); 0: okBody.
	BodySize int
	body     string // of BodySize, made by setFaults
	// Echo makes a 200's body name what it answers: the target, the
	// caller's Authorization and when it was made (S13), so that a
	// client can tell whose answer it got, and how old it is.
	Echo bool
}

// arrival is one request as the upstream saw it.
type arrival struct {
	At, Done   time.Time
	Method     string
	Status     int // 0: reset, hung, or its request ended before the answer
	RetryAfter time.Duration
	Keyed      bool // carried an Idempotency-Key
	BodyOK     bool // a POST whose body named its order
	// Executed is a POST whose body named its order and was read to its
	// end: the order was taken, whatever became of the answer (S10)
	Executed bool
}

// upstream is the origin server every proxy forwards to: a Go HTTP
// server on loopback whose faults the harness sets, and which counts
// what reaches it.
type upstream struct {
	addr string
	srv  *http.Server
	quit chan struct{}

	faults atomic.Pointer[faults]
	track  bool // keep per-id arrivals
	// seed of the fault draws: a request's faults depend on the seed,
	// its id and which arrival of it this is, so every setup of a
	// repetition meets the same faults, and repetitions differ
	seed uint64

	mu    sync.Mutex
	ln    net.Listener // nil while refusing
	conns map[net.Conn]struct{}
	recs  map[string][]arrival

	requests    atomic.Int64
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
	emptyBodies atomic.Int64
}

// startUpstream listens on a free loopback port and serves.
func startUpstream(track bool) (*upstream, error) {
	return serveUpstream(track, nil)
}

// serveUpstream listens on a free loopback port and serves with h, or
// with the upstream's own handler when h is nil: another provider (S12's)
// gets the same port, outage and connection tracking.
func serveUpstream(track bool, h http.Handler) (*upstream, error) {
	ln, err := listenFree()
	if err != nil {
		return nil, err
	}
	u := &upstream{
		addr:  ln.Addr().String(),
		quit:  make(chan struct{}),
		track: track,
		ln:    ln,
		conns: map[net.Conn]struct{}{},
		recs:  map[string][]arrival{},
	}
	u.faults.Store(&faults{})
	if h == nil {
		h = u
	}
	u.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         u.connState,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go u.srv.Serve(ln)
	return u, nil
}

func (u *upstream) connState(c net.Conn, s http.ConnState) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch s {
	case http.StateNew:
		u.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(u.conns, c)
	}
}

func (u *upstream) setFaults(f faults) {
	if f.BodySize > 0 {
		f.body = strings.Repeat("x", f.BodySize-1) + "\n"
	}
	u.faults.Store(&f)
}

// draw returns a number in [0, 1) for the kind-th fault of the idx-th
// arrival of request id: fixed by the seed, so the same for every setup
// of a repetition. Requests without an id draw at random.
func (u *upstream) draw(id string, idx int, kind uint64) float64 {
	if id == "" {
		return rand.Float64()
	}
	return seededDraw(u.seed, id, idx, kind)
}

// seededDraw is the number in [0, 1) that seed gives the kind-th fault
// of the idx-th arrival of request id.
func seededDraw(seed uint64, id string, idx int, kind uint64) float64 {
	h := fnv.New64a()
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(idx))
	binary.LittleEndian.PutUint64(b[16:], kind)
	h.Write(b[:])
	h.Write([]byte(id))
	// FNV alone keeps ids that differ in their last byte close; the
	// finalizer spreads them, so that faults stay independent from one
	// request to the next
	return unit(scramble(h.Sum64()))
}

// scramble is the finalizer of MurmurHash3: close inputs give
// unrelated outputs.
func scramble(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb3fe1a85ec53
	x ^= x >> 33
	return x
}

// unit maps x to [0, 1).
func unit(x uint64) float64 { return float64(x>>11) / (1 << 53) }

// down reports whether the upstream is refusing connections (an outage).
func (u *upstream) down() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.ln == nil
}

func (u *upstream) port() int {
	_, p, _ := net.SplitHostPort(u.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// refuse makes the upstream go away: the listener closes, so connects
// are refused, and every open connection is closed.
func (u *upstream) refuse() error {
	u.mu.Lock()
	ln := u.ln
	u.ln = nil
	conns := make([]net.Conn, 0, len(u.conns))
	for c := range u.conns {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	if ln == nil {
		return nil
	}
	err := ln.Close()
	for _, c := range conns {
		c.Close()
	}
	return err
}

// restore listens again on the same port after refuse.
func (u *upstream) restore() error {
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", u.addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("upstream: listen again on %s: %v", u.addr, err)
	}
	u.mu.Lock()
	u.ln = ln
	u.mu.Unlock()
	go u.srv.Serve(ln)
	return nil
}

// close stops the server and releases hung handlers.
func (u *upstream) close() {
	select {
	case <-u.quit:
	default:
		close(u.quit)
	}
	u.srv.Close()
}

// resetCounts forgets everything seen so far (the warm-up).
func (u *upstream) resetCounts() {
	u.mu.Lock()
	u.recs = map[string][]arrival{}
	u.mu.Unlock()
	u.requests.Store(0)
	u.emptyBodies.Store(0)
	u.maxInFlight.Store(u.inFlight.Load())
}

// upstreamStats is what the upstream saw during a run.
type upstreamStats struct {
	Requests       int64
	MaxConcurrency int64
	EmptyBodies    int64 // POSTs whose body did not carry their order
	Arrivals       map[string][]arrival
}

func (u *upstream) stats() upstreamStats {
	u.mu.Lock()
	recs := make(map[string][]arrival, len(u.recs))
	for id, as := range u.recs {
		recs[id] = append([]arrival(nil), as...)
	}
	u.mu.Unlock()
	return upstreamStats{
		Requests:       u.requests.Load(),
		MaxConcurrency: u.maxInFlight.Load(),
		EmptyBodies:    u.emptyBodies.Load(),
		Arrivals:       recs,
	}
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := arrival{At: time.Now(), Method: r.Method, Keyed: r.Header.Get("Idempotency-Key") != ""}
	n := u.inFlight.Add(1)
	for {
		m := u.maxInFlight.Load()
		if n <= m || u.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	defer u.inFlight.Add(-1)
	u.requests.Add(1)
	id := r.Header.Get("X-Bench-Id")

	if r.Method == http.MethodPost {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		a.BodyOK = id != "" && bytes.HasPrefix(body, []byte("order="+id+"&"))
		a.Executed = a.BodyOK && err == nil
		if !a.BodyOK {
			u.emptyBodies.Add(1)
		}
	}

	// record the arrival before answering, so that the first one is known
	first, idx := true, 0
	if u.track && id != "" {
		u.mu.Lock()
		as := u.recs[id]
		first, idx = len(as) == 0, len(as)
		u.recs[id] = append(as, a)
		u.mu.Unlock()
	}

	f := u.faults.Load()
	switch {
	case f.Hang:
		select {
		case <-r.Context().Done():
		case <-u.quit:
		}
	case f.Status != 0:
		a.Status = f.Status
		http.Error(w, "failing", f.Status)
	case f.P429 > 0 && first && u.draw(id, idx, 1) < f.P429:
		a.Status, a.RetryAfter = http.StatusTooManyRequests, f.RetryAfter
		w.Header().Set("Retry-After", strconv.Itoa(int(f.RetryAfter/time.Second)))
		http.Error(w, "slow down", http.StatusTooManyRequests)
	case r.Method == http.MethodPost && f.PReset > 0 && u.draw(id, idx, 2) < f.PReset:
		resetConn(w)
	case f.P503 > 0 && u.draw(id, idx, 3) < f.P503:
		a.Status = http.StatusServiceUnavailable
		http.Error(w, "try again", http.StatusServiceUnavailable)
	default:
		delay := f.Delay
		if f.DelaySpread > 0 {
			delay += time.Duration(u.draw(id, idx, 4) * float64(f.DelaySpread))
		}
		if f.PSlow > 0 && u.draw(id, idx, 5) < f.PSlow {
			delay = f.Slow
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-u.quit:
				t.Stop()
			case <-r.Context().Done():
				t.Stop()
			}
			if r.Context().Err() != nil {
				// the proxy gave up (its client gone, a hedge that lost):
				// nothing to answer, and the handler is free at once
				break
			}
		}
		a.Status = http.StatusOK
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case f.Echo:
			w.Header().Set("Content-Type", "application/json")
			w.Write(echoBody(r))
		case f.body != "":
			w.Header().Set("Content-Length", strconv.Itoa(len(f.body)))
			io.WriteString(w, f.body)
		default:
			io.WriteString(w, okBody)
		}
	}
	a.Done = time.Now()

	if u.track && id != "" {
		u.mu.Lock()
		if as := u.recs[id]; idx < len(as) {
			as[idx] = a
		}
		u.mu.Unlock()
	}
}

// okBody is a small JSON-ish answer, like an API's.
var okBody = `{"status":"ok","data":"` + strings.Repeat("x", 96) + `"}` + "\n"

// resetConn drops the connection with an RST and no answer.
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// reservedPorts are used by the project's tests and demo.
var reservedPorts = map[int]bool{2999: true, 9080: true, 9443: true, 2019: true, 8080: true,
	9001: true, 9002: true, 9003: true, 9004: true}

// listenFree listens on a free loopback port that is not reserved.
func listenFree() (net.Listener, error) {
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		if !reservedPorts[ln.Addr().(*net.TCPAddr).Port] {
			return ln, nil
		}
		ln.Close()
	}
	return nil, errors.New("no free loopback port")
}

// freePort returns a loopback port that is free now, for a child
// process to listen on.
func freePort() (int, error) {
	ln, err := listenFree()
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
