package idempotency

import "sync/atomic"

// totals are the process-wide sums over every open store, moved by each
// store as its records come and go, so that reading them takes no lock.
var totals struct {
	records atomic.Int64 // in flight and completed
	bytes   atomic.Int64 // Answer.Size of the completed
}

// Stats returns the process-wide totals over every open store (Memory
// stores, and so the local part of a fleet store): records in flight and
// completed, and bytes of kept answers. The transport turns them into the
// gauges caddy_resilient_idempotency_records and
// caddy_resilient_idempotency_bytes.
func Stats() (records, bytes int64) {
	return totals.records.Load(), totals.bytes.Load()
}
