package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// Key identifies one record: SHA-256 over the scope values and the key,
// so neither is kept or logged in clear (a scope value may be an
// Authorization header).
type Key [32]byte

// keyDomain starts every key's hash, so that a Key never equals another
// hash of the same bytes made for another purpose (a Fingerprint, say).
const keyDomain = "resilient idempotency key v1\x00"

// NewKey returns the Key of key under the scope values. Each part is
// prefixed with its length, and the parts with their number, so that no
// two different inputs encode alike: scope ["ab"] and key "c" is not
// scope ["a"] and key "bc", nor scope ["a", "b"] and key "c".
func NewKey(scope []string, key string) Key {
	h := sha256.New()
	h.Write([]byte(keyDomain))
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(scope)))])
	for _, s := range append(scope[:len(scope):len(scope)], key) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	var k Key
	h.Sum(k[:0])
	return k
}

// String returns the first 16 bytes of k in hex: short enough for Redis
// key names and logs, and at 128 bits still without a collision in any
// number of records a gateway keeps.
func (k Key) String() string { return hex.EncodeToString(k[:16]) }
