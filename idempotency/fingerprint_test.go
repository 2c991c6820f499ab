package idempotency

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

// The fingerprint does not depend on how the body is cut into writes.
func TestHasherChunking(t *testing.T) {
	body := make([]byte, 100_000)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range body {
		body[i] = byte(rng.Uint32())
	}
	whole := NewHasher("POST", "/v1/charges?x=1")
	whole.Write(body)
	want := whole.Sum()

	for _, size := range []int{1, 7, 4096, 32 * 1024} {
		h := NewHasher("POST", "/v1/charges?x=1")
		if _, err := io.CopyBuffer(h, bytes.NewReader(body), make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		if got := h.Sum(); got != want {
			t.Errorf("chunks of %d: another fingerprint", size)
		}
	}
	h := NewHasher("POST", "/v1/charges?x=1")
	for rest := body; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(5000))
		h.Write(rest[:n])
		rest = rest[n:]
	}
	if h.Sum() != want {
		t.Error("random chunks: another fingerprint")
	}
}

// Moving bytes between method, target and body changes the fingerprint;
// so do the method, target or body themselves.
func TestHasherBoundaries(t *testing.T) {
	sum := func(method, target, body string) Fingerprint {
		h := NewHasher(method, target)
		h.Write([]byte(body))
		return h.Sum()
	}
	seen := map[Fingerprint][3]string{}
	for _, c := range [][3]string{
		{"POST", "/a", "b"},
		{"POST", "/ab", ""},
		{"POST", "/", "ab"},
		{"POS", "T/a", "b"},
		{"POST/a", "", "b"},
		{"", "POST/a", "b"},
		{"", "", "POST/ab"},
		{"PATCH", "/a", "b"},
		{"POST", "/a", "c"},
		{"POST", "/a?", "b"},
		{"", "", ""},
	} {
		f := sum(c[0], c[1], c[2])
		if prev, ok := seen[f]; ok {
			t.Errorf("%q and %q have one fingerprint", prev, c)
		}
		seen[f] = c
	}
	if sum("POST", "/a", "b") != sum("POST", "/a", "b") {
		t.Error("the same request, two fingerprints")
	}
	var zero Hasher
	zero.Write([]byte("b"))
	if zero.Sum() != sum("", "", "b") {
		t.Error("the zero Hasher is not that of an empty method and target")
	}
}

// Keys are per scope: moving bytes between the scope values and the key
// makes another key.
func TestNewKey(t *testing.T) {
	seen := map[Key]string{}
	for _, c := range []struct {
		scope []string
		key   string
	}{
		{[]string{"ab"}, "c"},
		{[]string{"a"}, "bc"},
		{[]string{"a", "b"}, "c"},
		{[]string{"a", "bc"}, ""},
		{[]string{"abc"}, ""},
		{nil, "abc"},
		{[]string{""}, "abc"},
		{[]string{"", ""}, "abc"},
		{[]string{"b"}, "c"},
	} {
		k := NewKey(c.scope, c.key)
		desc := fmt.Sprintf("scope %q key %q", c.scope, c.key)
		if prev, ok := seen[k]; ok {
			t.Errorf("%s and %s make one key", prev, desc)
		}
		seen[k] = desc
	}
	scope := make([]string, 2, 3)
	scope[0], scope[1] = "host", "auth"
	spare := scope[:3]
	spare[2] = "spare"
	if NewKey(scope, "k") != NewKey([]string{"host", "auth"}, "k") {
		t.Error("the same scope and key, two keys")
	}
	if spare[2] != "spare" {
		t.Error("NewKey wrote into the spare capacity of the caller's scope")
	}
	if s := NewKey(scope, "k").String(); len(s) != 32 || s == NewKey(scope, "l").String() {
		t.Errorf("String() = %q: want 32 hex digits, differing between keys", s)
	}
}

// A fingerprint covers HashedBody bytes of a body and whether there are
// more, however the body is written: two bodies that differ only past
// HashedBody are one request to it (the gateway may never read that far
// of a first request's body), and a body of exactly HashedBody bytes is
// not one that goes on.
func TestFingerprintCoversHashedBodyAndWhetherThereIsMore(t *testing.T) {
	sum := func(parts ...[]byte) Fingerprint {
		h := NewHasher("POST", "/orders")
		for _, p := range parts {
			h.Write(p)
		}
		return h.Sum()
	}
	full := bytes.Repeat([]byte("a"), HashedBody)
	if sum(full) == sum(full, []byte("b")) {
		t.Fatal("a body of HashedBody bytes and a longer one have one fingerprint")
	}
	if sum(full, []byte("b")) != sum(full, []byte("c"), []byte("more")) {
		t.Fatal("bodies that differ only past HashedBody have two fingerprints")
	}
	// the same bytes in other pieces: one write across the limit
	if sum(full[:10], full[10:], []byte("b")) != sum(append(full[:HashedBody:HashedBody], 'z')) {
		t.Fatal("the fingerprint depends on how the body was cut into writes")
	}
	if sum(full[:HashedBody-1], []byte("x")) == sum(full) {
		t.Fatal("a difference within HashedBody is not seen")
	}
	h := NewHasher("POST", "/")
	h.Write(full)
	if h.Full() {
		t.Fatal("Full after exactly HashedBody bytes: it cannot know yet whether more follow")
	}
	h.Write([]byte("x"))
	if !h.Full() {
		t.Fatal("not Full past HashedBody")
	}
}
