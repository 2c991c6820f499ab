// Package idempotency keeps the gateway's Idempotency-Key records: a
// keyed unsafe request is sent upstream at most once per key, and every
// repeat gets the first one's answer
// (draft-ietf-httpapi-idempotency-key-header-07; SPEC §13).
//
// The transport calls it at two places: Begin before the first attempt,
// which says whether to send (New, with a Claim) or what to answer
// instead, and the Claim's Keep or Release once the request has ended.
// Memory keeps the records of one process; NewFleet adds the fleet's
// Redis, so that a repeat on another instance is caught too.
package idempotency

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// DefaultLease bounds an in-flight claim when Begin is given none: long
// enough for any request the gateway lets run, short enough that a key
// whose claim is never ended (a bug) comes free again the same day.
const DefaultLease = 10 * time.Minute

// Answer is what a record keeps of the first request's end.
type Answer struct {
	// Status is the upstream's status, or the gateway's 502/504 for an
	// Outcome.
	Status int
	// Header is the answer's header as the upstream sent it.
	Header http.Header
	// Body is the answer's body when Whole. In an Answer a store returns
	// it is shared with the record and with other repeats: read it, do
	// not change it.
	Body []byte
	// Whole says the body is kept whole; false: only status and header
	// are (a large answer, or one cut short).
	Whole bool
	// Outcome is "" for the upstream's own answer; else the transport
	// outcome (reset, read_timeout, ...) of a request that got no answer
	// after bytes of it were sent, Status being its 502/504.
	Outcome string
}

// answerOverhead is what a kept answer costs beyond its encoded bytes:
// the record itself and its map entry (about 260 bytes on the heap), and
// as much again of the room the garbage collector leaves a heap to grow.
const answerOverhead = 512

// Size returns the bytes a holds, as MaxMemory counts them: a record's
// encoding (see wire.go), with its body only when Whole, and a small
// constant for the record itself.
func (a *Answer) Size() int64 {
	if a == nil {
		return 0
	}
	n := 2 + len(Fingerprint{}) + 2 + 1 + uvarintLen(len(a.Outcome)) + len(a.Outcome)
	lines := 0
	for name, vs := range a.Header {
		for _, v := range vs {
			lines++
			n += uvarintLen(len(name)) + len(name) + uvarintLen(len(v)) + len(v)
		}
	}
	n += uvarintLen(lines)
	body := 0
	if a.Whole {
		body = len(a.Body)
	}
	n += uvarintLen(body) + body
	return int64(answerOverhead + n)
}

// uvarintLen is how many bytes binary.AppendUvarint takes for n.
func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

// clone returns a copy of a that shares nothing with it, so that a
// record never changes under the caller's feet (a pooled body buffer,
// say) nor the caller's copy under the record's. Only a Whole answer
// keeps its body.
func (a Answer) clone() Answer {
	a.Header = a.Header.Clone()
	if a.Whole && a.Body != nil {
		a.Body = append([]byte(nil), a.Body...)
	} else {
		a.Body = nil
	}
	return a
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
	// Answer is set with Replay, and with Used (status and header only).
	// Its Header is the caller's own to add to.
	Answer *Answer
}

// Store keeps the records.
type Store interface {
	// Begin looks k up and claims it when free. fp is called only when
	// k's record is complete (to compare fingerprints; it reads the
	// repeat's request body), at most once.
	//
	// wait > 0: a repeat finding the first in flight waits up to wait
	// (and never past ctx) for it to complete, and then gets the Replay
	// (or Mismatch, or Used); when the first is released while repeats
	// wait, exactly one waiter claims it (New) and the others go on
	// waiting for that one. When wait runs out: InFlight. wait <= 0:
	// InFlight at once.
	//
	// lease bounds an in-flight claim that is never ended (a crash, a
	// bug): past it the record counts as released. lease <= 0 means
	// DefaultLease. The error is fp's, or ctx's when it ended while
	// waiting.
	Begin(ctx context.Context, k Key, lease, wait time.Duration, fp func() (Fingerprint, error)) (Result, error)
}

// Claim is the first request's hold on its key. Exactly one of Keep or
// Release is called, once; a second call of either does nothing.
type Claim interface {
	// Keep completes the record with the request's fingerprint and
	// answer, kept for the store's TTL. A Claim whose lease ran out and
	// whose key another request claimed since keeps nothing.
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
	a.Header = a.Header.Clone() // the caller adds Idempotent-Replayed to it
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
