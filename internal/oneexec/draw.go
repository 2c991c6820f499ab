package oneexec

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Everything random in a run is drawn from its seed: the clients' choices
// from one stream per client, and each execution's fault from a stream
// named by the execution's key and its rank among that key's executions,
// so that the same key meets the same faults in every run of a seed,
// whatever the interleaving.

// streamOf returns a random stream named by seed and parts.
func streamOf(seed uint64, parts ...string) *rand.Rand {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h.Write(b[:])
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// between draws a duration from lo to hi.
func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// sizeBetween draws a size from lo to hi bytes.
func sizeBetween(r *rand.Rand, lo, hi int) int {
	if hi <= lo {
		return lo
	}
	return lo + r.IntN(hi-lo)
}

// blockSize is the length of a run's block of random bytes, from which
// every body is cut: larger than any body.
const blockSize = 2 << 20

// newBlock returns the run's block of random bytes: bodies are slices of
// it, so that making a 1.5 MiB body costs no per-byte work.
func newBlock(seed uint64) []byte {
	b := make([]byte, blockSize)
	r := rand.NewChaCha8(seedBytes(seed))
	_, _ = r.Read(b)
	return b
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	copy(s[8:], "one execution per key")
	return s
}

// requestSize draws the length of a keyed POST's body: empty, small,
// medium, large, and up to 1.5 MiB (past the retry copy's 1 MiB).
func requestSize(r *rand.Rand) int {
	switch p := r.Float64(); {
	case p < 0.15:
		return 0
	case p < 0.50:
		return sizeBetween(r, 1, 2<<10)
	case p < 0.75:
		return sizeBetween(r, 2<<10, 64<<10)
	case p < 0.90:
		return sizeBetween(r, 64<<10, 512<<10)
	}
	return sizeBetween(r, 512<<10, 1536<<10)
}

// Fault is what the upstream does with one execution of a keyed POST.
type Fault uint8

const (
	// Answer: it answers at once.
	Answer Fault = iota
	// Slow: it answers after Hold, past the client's patience and the
	// caller's deadline, well within the gateway's complete_within.
	Slow
	// Hang: it answers after Hold, past complete_within: the gateway
	// gives up on it, and its record keeps the no-answer.
	Hang
	// Reset: it reads the body, acts, and resets the connection without
	// a word.
	Reset
	// Cut: it acts and starts its answer, then resets the connection
	// halfway through the body.
	Cut
)

// String names the fault as the report's messages do.
func (f Fault) String() string {
	switch f {
	case Answer:
		return "answer"
	case Slow:
		return "slow"
	case Hang:
		return "hang"
	case Reset:
		return "reset"
	case Cut:
		return "cut"
	}
	return "fault?"
}

// releasing reports whether an answer with status says the upstream did
// nothing (SPEC §13: 408 425 429 503), so that the gateway may send the
// key again.
func releasing(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return true
	}
	return false
}

// plan is what the upstream does with one execution, drawn from the
// seed, the key and the execution's rank for the key.
type plan struct {
	fault      Fault
	hold       time.Duration
	status     int
	retryAfter string // with 429 and 503: "" or whole seconds
	size       int    // of the answer's body
	chunked    bool   // no Content-Length: the body streams in chunks
	json       bool   // its Content-Type
	nonce      string // unique to the execution
}

// planFor draws the plan of the rank-th execution of key. Calm runs (the
// final sweep) answer 200 at once.
func (u *Upstream) planFor(key string, rank int, calm bool) plan {
	r := streamOf(u.seed, "execution", key, strconv.Itoa(rank))
	p := plan{fault: Answer, status: http.StatusOK, size: answerSize(r), chunked: r.Float64() < 0.3, json: r.IntN(2) == 0,
		nonce: fmt.Sprintf("%016x", r.Uint64())}
	if calm {
		return p
	}
	switch f := r.Float64(); {
	case f < 0.08:
		p.fault, p.hold = Slow, between(r, u.timing.SlowMin, u.timing.SlowMax)
	case f < 0.10:
		p.fault, p.hold = Hang, u.timing.Hang
	case f < 0.16:
		p.fault = Reset
	case f < 0.18:
		p.fault = Cut
		p.size = max(p.size, 8<<10) // something to cut
	}
	switch s := r.Float64(); {
	case s < 0.08:
		p.status = http.StatusServiceUnavailable
		if r.IntN(3) == 0 {
			p.retryAfter = "1"
		} else {
			p.retryAfter = "0"
		}
	case s < 0.14:
		p.status = http.StatusTooManyRequests
		if r.IntN(2) == 0 {
			p.retryAfter = "1"
		}
	case s < 0.16:
		p.status = http.StatusRequestTimeout
	case s < 0.18:
		p.status = http.StatusTooEarly
	case s < 0.28:
		p.status = []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusUnprocessableEntity}[r.IntN(4)]
	case s < 0.36:
		p.status = []int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout}[r.IntN(3)]
	case s < 0.50:
		p.status = []int{http.StatusCreated, http.StatusAccepted}[r.IntN(2)]
	}
	return p
}

// answerSize draws the length of an answer's body: mostly small, some
// large, and a few past max_response (1 MiB), whose key is then used
// without its answer kept.
func answerSize(r *rand.Rand) int {
	switch p := r.Float64(); {
	case p < 0.10:
		return 0
	case p < 0.70:
		return sizeBetween(r, 1, 4<<10)
	case p < 0.90:
		return sizeBetween(r, 4<<10, 64<<10)
	case p < 0.97:
		return sizeBetween(r, 64<<10, 256<<10)
	}
	return sizeBetween(r, 1100<<10, 1300<<10)
}
