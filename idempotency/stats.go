package idempotency

// Stats returns the process-wide totals over every open Memory (and so
// the local part of a fleet store): records in flight and completed,
// and bytes of kept answers (Answer.Size). The transport turns them into
// the gauges caddy_resilient_idempotency_records and
// caddy_resilient_idempotency_bytes. They count the idempotency records
// only, apart from any other user of the kept-answer store.
func Stats() (records, bytes int64) {
	return inFlight.Load() + usage.Values(), usage.Bytes()
}
