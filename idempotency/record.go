package idempotency

import "time"

// record is one key's entry in a Memory: in flight from Begin to its
// Claim's end, then completed until it expires or is dropped for memory.
// Its fields are guarded by the Memory's lock.
type record struct {
	key        Key
	prev, next *record // in the Memory's flying or done list
	done       bool

	// in flight
	leaseEnd time.Time
	wake     chan struct{} // made by the first waiter, closed when the record ends
	waiters  int           // on wake

	// completed
	fp      Fingerprint
	pos     uint64 // of its encoded answer in the Memory's ring
	n       int    // bytes of it there
	size    int64  // what MaxMemory counts of it: n, and the record itself
	expires time.Time
}

// recordList is a doubly linked list of records threaded through them,
// so that a record leaves its list in O(1) without an allocation per
// entry.
type recordList struct {
	head, tail *record
}

// push adds r at the tail.
func (l *recordList) push(r *record) {
	r.prev, r.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = r
	} else {
		l.head = r
	}
	l.tail = r
}

// remove takes r, which is in l, out of it.
func (l *recordList) remove(r *record) {
	if r.prev != nil {
		r.prev.next = r.next
	} else {
		l.head = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	} else {
		l.tail = r.prev
	}
	r.prev, r.next = nil, nil
}

// end wakes whoever waits for r: it is no longer in flight.
func (r *record) end() {
	if r.wake != nil {
		close(r.wake)
		r.wake, r.waiters = nil, 0
	}
}
