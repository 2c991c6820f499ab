package resilient

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddy-resilient/resilient/idempotency"
	"github.com/caddyserver/caddy/v2"
)

// provisioned returns an Idempotency provisioned as a transport does,
// with a fleet link when fleet is not empty (one whose Redis is never
// reached: its records are kept on this instance only).
func provisioned(t *testing.T, ix *Idempotency, fleet string) *Idempotency {
	t.Helper()
	var fl *fleetLink
	if fleet != "" {
		fl = &fleetLink{id: fleet}
	}
	if err := ix.provision(fl); err != nil {
		t.Fatal(err)
	}
	return ix
}

// keep claims k in ix's store and keeps an answer of n bytes.
func keep(t *testing.T, ix *Idempotency, k idempotency.Key, n int) {
	t.Helper()
	r, err := ix.store.Begin(context.Background(), k, idempotency.Params{TTL: time.Duration(ix.TTL)}, nil)
	if err != nil || r.Verdict != idempotency.New {
		t.Fatalf("Begin: %v, %v; want new", r.Verdict, err)
	}
	r.Claim.Keep(idempotency.Fingerprint{1}, idempotency.Answer{Status: 201, Body: []byte(strings.Repeat("a", n)), Whole: true})
}

// repeat fails t unless k's record in ix's store gives want.
func repeat(t *testing.T, ix *Idempotency, k idempotency.Key, want idempotency.Verdict) {
	t.Helper()
	fp := func() (idempotency.Fingerprint, error) { return idempotency.Fingerprint{1}, nil }
	r, err := ix.store.Begin(context.Background(), k, idempotency.Params{}, fp)
	if err != nil || r.Verdict != want {
		t.Fatalf("a repeat: %v, %v; want %v", r.Verdict, err, want)
	}
	if r.Claim != nil {
		r.Claim.Release()
	}
}

// The transports of successive configs share one store, whatever their
// settings: a record kept under one is replayed under the next when
// ttl, max_memory or the fleet change; the largest max_memory held
// applies, and the next config's as soon as the old one lets go; the
// store goes when no config keeps records any more.
func TestIdempotencyStoreOutlivesEverySetting(t *testing.T) {
	baseRecords, baseBytes := idempotency.Stats()
	k := idempotency.NewKey([]string{"host"}, "k1")
	big := idempotency.NewKey([]string{"host"}, "big")

	first := provisioned(t, &Idempotency{TTL: caddy.Duration(time.Hour), MaxMemory: 1 << 20}, "")
	keep(t, first, k, 100)
	second := provisioned(t, &Idempotency{TTL: caddy.Duration(2 * time.Hour), MaxMemory: 4 << 20}, "fleet-a")
	first.cleanup()
	repeat(t, second, k, idempotency.Replay)
	keep(t, second, big, 3<<20) // within the new config's max_memory
	repeat(t, second, big, idempotency.Replay)

	third := provisioned(t, &Idempotency{}, "") // the fleet removed, the defaults
	second.cleanup()
	repeat(t, third, k, idempotency.Replay)
	repeat(t, third, big, idempotency.Replay) // 64MiB now
	third.cleanup()
	if n, b := idempotency.Stats(); n != baseRecords || b != baseBytes {
		t.Errorf("once no config keeps records: %d records, %d bytes; before, %d and %d", n, b, baseRecords, baseBytes)
	}
}
