package idempotency

// flight is a key's record in a Memory while its first request is under
// way: from Begin to its Claim's Keep or Release, however long that
// takes. It has no expiry: a request that streams its answer for an
// hour still holds its key, and only its own end frees it. Its fields
// are guarded by the Memory's lock.
type flight struct {
	key     Key
	wake    chan struct{} // made by the first waiter, closed when the flight ends
	waiters int           // on wake
}

// end wakes whoever waits for f: it is no longer in flight.
func (f *flight) end() {
	if f.wake != nil {
		close(f.wake)
		f.wake, f.waiters = nil, 0
	}
}
