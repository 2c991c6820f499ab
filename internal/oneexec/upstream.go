package oneexec

import (
	"crypto/sha256"
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

// Headers between the clients, the gateways and the upstream.
const (
	// HeaderSend names one HTTP request of a client: the gateway passes
	// it on, so the upstream knows which request each execution came
	// from.
	HeaderSend = "X-Send-Id"
	// HeaderGateway is set by each gateway on what it sends upstream
	// (header_up X-Gateway <its name>).
	HeaderGateway = "X-Gateway"
	// HeaderExec carries the number of the execution an upstream answer
	// came from.
	HeaderExec = "X-Exec"
	// HeaderOutcome, HeaderExecuted and HeaderIdem are the gateway's
	// verdict on each answer: {http.resilient.outcome},
	// {http.resilient.executed} and {http.resilient.idempotency}.
	HeaderOutcome  = "X-Outcome"
	HeaderExecuted = "X-Executed"
	HeaderIdem     = "X-Idem"
)

// Paths the upstream serves.
const (
	// PathKeyed takes the keyed POSTs.
	PathKeyed = "/pay"
	// PathHedge takes GETs, slow on their first arrival: the gateway
	// hedges them, which shows that its hedge block is live.
	PathHedge = "/hedge"
)

// Execution is one keyed POST as the upstream took it.
type Execution struct {
	N       int64  // its number, in the order of arrival
	Send    string // the client request it came from (HeaderSend)
	Gateway string // the gateway that sent it (HeaderGateway)
	Key     string // Authorization and key, the gateway's scope on one host
	Rank    int    // how many executions of Key came before it

	Body    [32]byte // SHA-256 of the request body read
	BodyLen int64
	BodyErr string // the body could not be read whole

	Start, End time.Time
	// Told is when its status began to go out (zero: it never did): a
	// retry of its request may start from then on, before End.
	Told  time.Time
	Fault Fault
	Plan  string // what it was to do, for messages

	Status    int
	Header    http.Header // the headers it set on its answer
	Answer    [32]byte    // SHA-256 of its whole answer's body
	AnswerLen int
	// Delivered: its answer was written whole.
	Delivered bool
	// Acting: it may have acted. Every execution does, but one whose
	// status 408, 425, 429 or 503 went out: the upstream said it did
	// nothing.
	Acting bool
}

// Arrival is one GET of the hedge probe at the upstream.
type Arrival struct {
	Start, End time.Time
}

// Timing is how long things take in a run, in the order the guarantee
// needs them: a slow answer comes after the client's patience and the
// caller's deadline, well within complete_within; a hanging one after
// complete_within.
type Timing struct {
	// Patience is the range of the clients' own timeouts per request.
	Patience [2]time.Duration
	// Deadline is the range of the caller deadlines (X-Request-Timeout)
	// that most requests carry.
	Deadline [2]time.Duration
	// Total is the gateway's timeouts.total.
	Total time.Duration
	// CompleteWithin is the gateway's idempotency complete_within.
	CompleteWithin time.Duration
	// SlowMin and SlowMax bound a Slow answer's hold.
	SlowMin, SlowMax time.Duration
	// Hang is a Hang answer's hold.
	Hang time.Duration
}

// DefaultTiming is the timing of the CI test and the bench.
var DefaultTiming = Timing{
	Patience:       [2]time.Duration{200 * time.Millisecond, 4 * time.Second},
	Deadline:       [2]time.Duration{250 * time.Millisecond, 1200 * time.Millisecond},
	Total:          3 * time.Second,
	CompleteWithin: 4 * time.Second,
	SlowMin:        800 * time.Millisecond,
	SlowMax:        2500 * time.Millisecond,
	Hang:           6 * time.Second,
}

// Upstream is the provider behind the gateways: a loopback HTTP server
// that executes keyed POSTs, each with a fault drawn from the seed, and
// records every execution, its request and its answer. Every answer is
// unique to its execution (number, nonce, body), so that a client's
// answer names the one execution it came from.
type Upstream struct {
	seed   uint64
	timing Timing
	block  []byte
	ln     net.Listener
	srv    *http.Server
	calm   atomic.Bool
	active atomic.Int64
	seq    atomic.Int64

	mu    sync.Mutex
	execs []*Execution
	ranks map[string]int
	gets  map[string][]Arrival
}

// NewUpstream starts an upstream on a free loopback port.
func NewUpstream(seed uint64, timing Timing) (*Upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &Upstream{seed: seed, timing: timing, block: newBlock(seed), ln: ln,
		ranks: map[string]int{}, gets: map[string][]Arrival{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathKeyed, u.keyed)
	mux.HandleFunc("GET "+PathHedge, u.hedge)
	u.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = u.srv.Serve(ln) }()
	return u, nil
}

// Addr is the upstream's host:port.
func (u *Upstream) Addr() string { return u.ln.Addr().String() }

// Close stops the upstream, cutting whatever it still holds.
func (u *Upstream) Close() error { return u.srv.Close() }

// busy reports whether it is handling a request.
func (u *Upstream) busy() bool { return u.active.Load() > 0 }

// setCalm makes every later execution answer 200 at once (the final
// sweep), or lets the faults apply again.
func (u *Upstream) setCalm(calm bool) { u.calm.Store(calm) }

// executions returns a copy of every execution so far, in order.
func (u *Upstream) executions() []Execution {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]Execution, len(u.execs))
	for i, e := range u.execs {
		out[i] = *e
	}
	return out
}

// hedgeArrivals returns a copy of the GET arrivals, by client request.
func (u *Upstream) hedgeArrivals() map[string][]Arrival {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[string][]Arrival, len(u.gets))
	for k, v := range u.gets {
		out[k] = append([]Arrival(nil), v...)
	}
	return out
}

// keyOf is the key of a keyed POST as the gateway's default scope on one
// host sees it: the Authorization value and the key, unquoted ("k" and
// k are one key).
func keyOf(auth, key string) string {
	key = strings.TrimSpace(key)
	if len(key) >= 2 && key[0] == '"' && key[len(key)-1] == '"' {
		key = key[1 : len(key)-1]
	}
	return auth + "|" + key
}

// keyed executes a keyed POST.
func (u *Upstream) keyed(w http.ResponseWriter, r *http.Request) {
	u.active.Add(1)
	defer u.active.Add(-1)
	e := &Execution{N: u.seq.Add(1), Send: r.Header.Get(HeaderSend), Gateway: r.Header.Get(HeaderGateway),
		Key: keyOf(r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key")), Start: time.Now(), Acting: true}
	u.mu.Lock()
	e.Rank = u.ranks[e.Key]
	u.ranks[e.Key]++
	slot := len(u.execs)
	u.execs = append(u.execs, &Execution{})
	u.mu.Unlock()
	// what is recorded is the execution as it ended
	defer func() {
		e.End = time.Now()
		u.mu.Lock()
		*u.execs[slot] = *e
		u.mu.Unlock()
	}()

	p := u.planFor(e.Key, e.Rank, u.calm.Load())
	e.Fault, e.Plan = p.fault, fmt.Sprintf("%s %d", p.fault, p.status)
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	copy(e.Body[:], h.Sum(nil))
	e.BodyLen = n
	if err != nil {
		// the request came apart: it counts as acting all the same
		e.BodyErr = err.Error()
		panic(http.ErrAbortHandler)
	}

	if p.fault == Reset {
		reset(w)
		return
	}
	if p.hold > 0 {
		t := time.NewTimer(p.hold)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			panic(http.ErrAbortHandler) // the gateway gave up on it: no answer
		}
	}
	if r.Context().Err() != nil {
		panic(http.ErrAbortHandler)
	}

	body := u.answerBody(e.N, e.Key, p)
	hd := w.Header()
	if p.json {
		hd.Set("Content-Type", "application/json")
	} else {
		hd.Set("Content-Type", "text/plain; charset=utf-8")
	}
	hd.Set(HeaderExec, strconv.FormatInt(e.N, 10))
	hd.Set("X-Nonce", p.nonce)
	hd["X-Up-List"] = []string{"first-" + p.nonce[:4], "second, with a comma"}
	hd["Set-Cookie"] = []string{"s=" + p.nonce + "; Path=/; HttpOnly", "t=" + strconv.FormatInt(e.N, 10)}
	if p.retryAfter != "" {
		hd.Set("Retry-After", p.retryAfter)
	}
	if !p.chunked {
		hd.Set("Content-Length", strconv.Itoa(len(body)))
	}
	e.Status, e.Header = p.status, hd.Clone()
	sum := sha256.Sum256(body)
	e.Answer, e.AnswerLen = sum, len(body)

	// the status goes out first: once it is out, a 408 425 429 503 has
	// said the upstream did nothing, whatever becomes of the body (the
	// gateway that retries may close the connection without reading it)
	w.WriteHeader(p.status)
	rc := http.NewResponseController(w)
	e.Told = time.Now() // from here the gateway may act on the status
	if rc.Flush() == nil && releasing(p.status) {
		e.Acting = false
	}
	if p.fault == Cut {
		_, _ = w.Write(body[:len(body)/2])
		_ = rc.Flush()
		reset(w)
		return
	}
	_, werr := w.Write(body)
	ferr := rc.Flush()
	e.Delivered = werr == nil && ferr == nil
}

// answerBody is the body of execution n's answer: a line naming it,
// then bytes of the run's block, size bytes in all.
func (u *Upstream) answerBody(n int64, key string, p plan) []byte {
	head := fmt.Sprintf("execution %d of %s, nonce %s\n", n, key, p.nonce)
	body := make([]byte, p.size)
	k := copy(body, head)
	off := int(n*7919) % (len(u.block) - p.size + 1)
	copy(body[k:], u.block[off:])
	return body
}

// reset drops the connection of w's request with a TCP RST, whatever
// was written of the answer.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// hedge answers the GETs of the hedge probe: a request's first arrival
// is slow half of the time, the others never, so that a hedge of it
// wins.
func (u *Upstream) hedge(w http.ResponseWriter, r *http.Request) {
	u.active.Add(1)
	defer u.active.Add(-1)
	send := r.Header.Get(HeaderSend)
	a := Arrival{Start: time.Now()}
	u.mu.Lock()
	rank := len(u.gets[send])
	u.gets[send] = append(u.gets[send], a)
	u.mu.Unlock()
	hold := 5 * time.Millisecond
	if rank == 0 && streamOf(u.seed, "hedge", send).IntN(2) == 0 {
		hold = 150 * time.Millisecond
	}
	t := time.NewTimer(hold)
	select {
	case <-t.C:
		_, _ = io.WriteString(w, "ok")
	case <-r.Context().Done():
		t.Stop()
	}
	u.mu.Lock()
	u.gets[send][rank].End = time.Now()
	u.mu.Unlock()
}
