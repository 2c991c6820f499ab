// Package idempotency keeps the gateway's Idempotency-Key records: a
// keyed unsafe request is sent upstream at most once per key, and every
// repeat gets the first one's answer
// (draft-ietf-httpapi-idempotency-key-header-07; SPEC §13).
//
// The transport calls it at two places: Begin before the first attempt,
// which says whether to send (New, with a Claim) or what to answer
// instead, and the Claim's Keep or Release once the request has ended.
// Memory keeps the records of one process, its answers in the
// kept-answer store of idempotency/answers; NewFleet adds the fleet's
// Redis, so that a repeat on another instance is caught too.
package idempotency

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/caddy-resilient/resilient/idempotency/answers"
)

// Answer is what a record keeps of the first request's end.
type Answer struct {
	// Status is the upstream's status, or the gateway's 502/504 for an
	// Outcome.
	Status int
	// Header is the answer's header as the upstream sent it.
	Header http.Header
	// Body is the answer's body when Whole. In an Answer a store
	// returns, header and body are the caller's own: each Begin decodes
	// its own copy of the record.
	Body []byte
	// Whole says the body is kept whole; false: only status and header
	// are (a large answer, or one cut short).
	Whole bool
	// Outcome is "" for the upstream's own answer; else the transport
	// outcome (reset, read_timeout, ...) of a request that got no answer
	// after bytes of it were sent, Status being its 502/504.
	Outcome string
}

// Size returns the bytes a holds, as MaxMemory counts them: its record's
// encoding (see wire.go) as a Memory would keep it (keepable), and what
// the store counts for each value beyond its bytes (answers.Overhead).
func (a *Answer) Size() int64 {
	if a == nil {
		return 0
	}
	k := keepable(*a)
	n := 2 + len(Fingerprint{}) + 2 + 1 + uvarintLen(len(k.Outcome)) + len(k.Outcome)
	lines := 0
	for name, vs := range k.Header {
		for _, v := range vs {
			lines++
			n += uvarintLen(len(name)) + len(name) + uvarintLen(len(v)) + len(v)
		}
	}
	n += uvarintLen(lines) + uvarintLen(len(k.Body)) + len(k.Body)
	return answers.Cost(n)
}

// uvarintLen is how many bytes binary.AppendUvarint takes for n.
func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

// Verdict is what Begin found for a key.
type Verdict uint8

const (
	// New: the caller is first with this key; it sends the request and
	// then ends its Claim.
	New Verdict = iota
	// Replay: Answer holds the earlier request's answer.
	Replay
	// InFlight: the first is still under way (once the wait ran out):
	// 409 with Retry-After.
	InFlight
	// Used: the first completed but its answer was not kept (Whole
	// false): 409 without Retry-After.
	Used
	// Mismatch: the key was used with another fingerprint: 422.
	Mismatch
)

// String returns the verdict's name as logs and placeholders spell it.
func (v Verdict) String() string {
	switch v {
	case New:
		return "new"
	case Replay:
		return "replay"
	case InFlight:
		return "in_flight"
	case Used:
		return "used"
	case Mismatch:
		return "mismatch"
	}
	return "verdict(" + strconv.Itoa(int(v)) + ")"
}

// Result is Begin's answer.
type Result struct {
	Verdict Verdict
	// Claim is set with New.
	Claim Claim
	// Answer is set with Replay; with Used it holds the status and
	// header that were kept, or is nil when the record could not be
	// read (then only the verdict is known). Its Header is the caller's
	// own to add to.
	Answer *Answer
}

// Params says how Begin treats one request's key.
type Params struct {
	// TTL is how long the request's answer is kept once its claim keeps
	// it. Default: the Memory's (Config.TTL).
	TTL time.Duration
	// Wait is how long a repeat that finds the first in flight waits for
	// its answer, never past Begin's ctx. 0: InFlight at once.
	Wait time.Duration
	// Waiting, when set, is called before a repeat starts to wait (at
	// least once, maybe more): the caller's chance to read its request
	// body, so that its server notices a client that leaves meanwhile
	// (Go's server watches the connection only once the body is read).
	Waiting func()
}

// Store keeps the records.
type Store interface {
	// Begin looks k up and claims it when free. fp is called only when
	// k's record is complete (to compare fingerprints; it reads the
	// repeat's request body), at most once.
	//
	// A repeat that finds the first in flight waits up to p.Wait (and
	// never past ctx) for it to complete, and then gets the Replay (or
	// Mismatch, or Used); when the first is released while repeats wait,
	// exactly one waiter claims it (New) and the others go on waiting
	// for that one. When the wait runs out: InFlight.
	//
	// A claim holds its key until it is kept or released, however long
	// that takes: the caller must end every claim it gets. The error is
	// fp's, or ctx's when it ended while waiting.
	Begin(ctx context.Context, k Key, p Params, fp func() (Fingerprint, error)) (Result, error)
}

// Claim is the first request's hold on its key. Exactly one of Keep or
// Release is called, once; a second call of either does nothing.
type Claim interface {
	// Keep completes the record with the request's fingerprint and
	// answer, kept for the TTL of Begin's Params. An answer that cannot
	// be kept whole (too large for the store, or a header a record
	// cannot hold) keeps its status and header, or its status alone: a
	// repeat gets Used, never a second execution. A Claim whose key
	// another request claimed since (in the fleet's Redis, once its
	// lease ran out) keeps nothing there.
	Keep(fp Fingerprint, a Answer)
	// Release deletes the record: the key is free again.
	Release()
}

// errNoFingerprint is Begin's answer to a nil fp that it needs: without
// a fingerprint, an answer could be replayed to another request.
var errNoFingerprint = errors.New("idempotency: no fingerprint function to compare a repeat with its record")

// judge compares a repeat's fingerprint with a completed record's and
// says what the repeat gets.
func judge(stored Fingerprint, a Answer, fp func() (Fingerprint, error)) (Result, error) {
	if stored == Unverifiable {
		// the first request's body was never all there to hash: no
		// repeat can be told the same or another; the key is used
		a.Body, a.Whole = nil, false
		return Result{Verdict: Used, Answer: &a}, nil
	}
	if fp == nil {
		return Result{}, errNoFingerprint
	}
	got, err := fp()
	if err != nil {
		return Result{}, err
	}
	if got != stored {
		return Result{Verdict: Mismatch}, nil
	}
	if !a.Whole {
		a.Body = nil
		return Result{Verdict: Used, Answer: &a}, nil
	}
	return Result{Verdict: Replay, Answer: &a}, nil
}

// noClaim is the Claim of a store that no longer keeps records (a
// closed Memory): the request goes on as if unkeyed.
type noClaim struct{}

func (noClaim) Keep(Fingerprint, Answer) {}
func (noClaim) Release()                 {}
