package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Fingerprint is SHA-256 of a request's method, request target and body:
// what tells a repeat of a request from another request that reuses its
// key.
type Fingerprint [32]byte

// fingerprintDomain starts every fingerprint's hash, as keyDomain does
// for keys.
const fingerprintDomain = "resilient idempotency fingerprint v1\x00"

// Hasher computes a fingerprint while the body streams through it:
// nothing is buffered, so a large body costs no memory. It is not safe
// for concurrent use, as a body is read by one goroutine. The zero
// Hasher is that of an empty method and target.
type Hasher struct {
	h hash.Hash
}

// NewHasher starts the fingerprint of a request of method to target (the
// path and query as the transport sends them). Method and target are
// prefixed with their lengths, so that where one ends and the next
// begins is never in doubt; the body, written next, is the rest.
func NewHasher(method, target string) *Hasher {
	h := new(Hasher)
	h.start(method, target)
	return h
}

func (h *Hasher) start(method, target string) {
	h.h = sha256.New()
	h.h.Write([]byte(fingerprintDomain))
	var n [binary.MaxVarintLen64]byte
	for _, s := range [...]string{method, target} {
		h.h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.h.Write([]byte(s))
	}
}

// Write adds p, a piece of the body, to the fingerprint. It never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	if h.h == nil {
		h.start("", "")
	}
	return h.h.Write(p)
}

// Sum returns the fingerprint of what was written so far; writing may
// go on after it.
func (h *Hasher) Sum() Fingerprint {
	if h.h == nil {
		h.start("", "")
	}
	var f Fingerprint
	h.h.Sum(f[:0])
	return f
}
