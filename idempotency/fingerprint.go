package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Fingerprint is SHA-256 of a request's method, request target and body:
// what tells a repeat of a request from another request that reuses its
// key. Of a body longer than HashedBody, the first HashedBody bytes
// count, and that it is longer: what the gateway may never read of a
// first request's body (an upstream that answered without reading it)
// must not make a byte-identical repeat look like another request.
type Fingerprint [32]byte

// HashedBody is how much of a request body a fingerprint covers.
const HashedBody = 8 << 20

// Unverifiable is the fingerprint of a request whose body could not be
// hashed as far as a fingerprint covers (its client left while sending
// it): a repeat can be neither matched nor told apart from it, so any
// repeat of its key is told the key is used (Used), never a mismatch
// and never a replay.
var Unverifiable = Fingerprint(sha256.Sum256([]byte(fingerprintDomain + "unverifiable")))

// fingerprintDomain starts every fingerprint's hash, as keyDomain does
// for keys.
const fingerprintDomain = "resilient idempotency fingerprint v1\x00"

// Hasher computes a fingerprint while the body streams through it:
// nothing is buffered, so a large body costs no memory. It is not safe
// for concurrent use, as a body is read by one goroutine. The zero
// Hasher is that of an empty method and target.
type Hasher struct {
	h      hash.Hash
	n      int64 // body bytes written
	longer bool  // the body is longer than HashedBody
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

// Write adds p, a piece of the body, to the fingerprint; past
// HashedBody bytes only that there are more counts. It never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	if h.h == nil {
		h.start("", "")
	}
	n := len(p)
	if room := HashedBody - h.n; int64(len(p)) > room {
		p, h.longer = p[:room], true
	}
	h.n += int64(len(p))
	h.h.Write(p)
	return n, nil
}

// Full reports whether the fingerprint covers all it ever will: the body
// went past HashedBody, so what follows does not count.
func (h *Hasher) Full() bool { return h.longer }

// Sum returns the fingerprint of what was written so far; writing may
// go on after it.
func (h *Hasher) Sum() Fingerprint {
	if h.h == nil {
		h.start("", "")
	}
	var f Fingerprint
	h.h.Sum(f[:0])
	if h.longer {
		// a mark of its own: a body of HashedBody bytes and a longer one
		// with the same start differ
		f = sha256.Sum256(append(f[:], "longer"...))
	}
	return f
}
