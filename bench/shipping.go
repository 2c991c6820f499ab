package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// S12's provider: a shipping API that ignores Idempotency-Key and
// misbehaves. It executes every POST it accepts, so a POST sent twice
// creates two shipments; it counts, per logical operation (the
// "reference" in the POST's body, the id in a GET's path), every
// arrival and every execution.
//
//	POST /v1/shipments        {"reference": "o17", ...}  -> 201 {"id": ..., "reference": "o17", ...}
//	GET  /v1/shipments/o17                               -> 200 {"id": ..., "reference": "o17", ...}
//
// Any other path answers 200 without a fault and is not counted (the
// harness's readiness probe).

// shippingFaults is how the provider misbehaves. One draw per arrival
// decides, from the repetition's seed, the operation and which arrival
// of it this is, so every setup meets the same fault on the same try
// and the shares are exact: the first P503 of [0, 1) answers 503
// (nothing executed), the next PSlow executes and answers after Slow,
// and, for POSTs, the next PDrop executes and then drops the connection
// without an answer.
type shippingFaults struct {
	P503  float64
	PSlow float64
	Slow  time.Duration
	PDrop float64
}

// The faults an arrival can meet, as recorded.
const (
	faultNone = ""
	fault503  = "503"
	faultSlow = "slow"
	faultDrop = "drop"
)

// shipArrival is one request of an operation as the provider saw it.
type shipArrival struct {
	At     time.Time
	Method string
	Key    string // Idempotency-Key as received, "" without
	Fault  string
	// Executed is a POST whose shipment the provider created, whatever
	// became of its answer.
	Executed bool
	// Status is the answer's status; 0: none (dropped, cut by the
	// outage, or its client left before a slow answer).
	Status int
	// Cut is an execution whose connection the provider ended without
	// an answer: a drop, or the outage closing it while a slow answer
	// was pending. Nobody on the client's side can know its result.
	Cut bool
}

// shipping is the provider. It serves on an upstream (serveUpstream),
// whose refuse and restore make the outage.
type shipping struct {
	up     *upstream
	seed   uint64
	faults atomic.Pointer[shippingFaults]

	mu  sync.Mutex
	ops map[string][]shipArrival
}

// startShipping starts the provider on a free loopback port; its
// faults draw from seed.
func startShipping(seed uint64) (*shipping, error) {
	s := &shipping{seed: seed, ops: map[string][]shipArrival{}}
	s.faults.Store(&shippingFaults{})
	up, err := serveUpstream(false, s)
	if err != nil {
		return nil, err
	}
	s.up = up
	return s, nil
}

func (s *shipping) close() { s.up.close() }

func (s *shipping) setFaults(f shippingFaults) { s.faults.Store(&f) }

// arrivals returns a copy of every operation's arrivals.
func (s *shipping) arrivals() map[string][]shipArrival {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]shipArrival, len(s.ops))
	for op, as := range s.ops {
		out[op] = append([]shipArrival(nil), as...)
	}
	return out
}

// shipmentRequest is the part of a POST's body the provider reads.
type shipmentRequest struct {
	Reference string `json:"reference"`
}

func (s *shipping) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := ""
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/shipments":
		var body shipmentRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil || body.Reference == "" {
			http.Error(w, `{"error":"a shipment needs a reference"}`, http.StatusBadRequest)
			return
		}
		op = body.Reference
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/shipments/"):
		op = strings.TrimPrefix(r.URL.Path, "/v1/shipments/")
	}
	if op == "" {
		io.WriteString(w, "ok\n")
		return
	}

	a := shipArrival{At: time.Now(), Method: r.Method, Key: r.Header.Get("Idempotency-Key")}
	s.mu.Lock()
	idx := len(s.ops[op])
	s.ops[op] = append(s.ops[op], a)
	n := 0 // shipments created for op so far: a second one gets another id
	for _, b := range s.ops[op] {
		if b.Executed {
			n++
		}
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.ops[op][idx] = a
		s.mu.Unlock()
	}()

	f := s.faults.Load()
	post := r.Method == http.MethodPost
	x := seededDraw(s.seed, op, idx, 7)
	switch {
	case x < f.P503:
		a.Fault, a.Status = fault503, http.StatusServiceUnavailable
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.Status)
		io.WriteString(w, `{"error":"service unavailable, try again"}`+"\n")
		return
	case x < f.P503+f.PSlow:
		a.Fault, a.Executed = faultSlow, post
		t := time.NewTimer(f.Slow)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			// its client left, or the outage closed the connection: then
			// the provider cut an execution off
			a.Cut = a.Executed && s.up.down()
			return
		case <-s.up.quit:
			return
		}
	case post && x < f.P503+f.PSlow+f.PDrop:
		a.Fault, a.Executed, a.Cut = faultDrop, true, true
		resetConn(w)
		return
	default:
		a.Executed = post
	}
	a.Status = http.StatusOK
	if post {
		a.Status = http.StatusCreated
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.Status)
	fmt.Fprintf(w, `{"id":"shp_%s_%d","reference":%q,"status":"label_created","carrier":"bench-post"}`+"\n", op, n+1, op)
}
