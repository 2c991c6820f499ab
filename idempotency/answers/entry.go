package answers

// entry is one value of a Store: where it lies in the ring, and the
// links that order it. Its fields are guarded by the Store's lock.
type entry struct {
	key     Key
	pos     uint64 // in the ring
	n       int    // bytes there
	kept    int64  // when it was put, in Unix nanoseconds
	expires int64  // when it goes, in Unix nanoseconds
	heapAt  int    // its index in the Store's expiry heap

	// age orders the entries by when they were put (the oldest goes
	// first for room); place orders them as they lie in the ring (the
	// head's goes first when the ring's room is reclaimed). The two
	// differ once an entry has been moved to the tail.
	age, place links
}

// links are an entry's neighbours in one list.
type links struct{ prev, next *entry }

// list is a doubly linked list of entries threaded through one of their
// links (which is, is chosen by the list's field), so that an entry
// leaves a list in O(1) without an allocation per entry.
type list struct {
	head, tail *entry
	of         func(*entry) *links
}

func byAge(e *entry) *links   { return &e.age }
func byPlace(e *entry) *links { return &e.place }

// push adds e at the tail.
func (l *list) push(e *entry) {
	el := l.of(e)
	el.prev, el.next = l.tail, nil
	if l.tail != nil {
		l.of(l.tail).next = e
	} else {
		l.head = e
	}
	l.tail = e
}

// remove takes e, which is in l, out of it.
func (l *list) remove(e *entry) {
	el := l.of(e)
	if el.prev != nil {
		l.of(el.prev).next = el.next
	} else {
		l.head = el.next
	}
	if el.next != nil {
		l.of(el.next).prev = el.prev
	} else {
		l.tail = el.prev
	}
	el.prev, el.next = nil, nil
}

// expiryHeap orders entries by expiry, soonest first, for the sweep:
// entries expire in any order, as each has its own.
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapAt, h[j].heapAt = i, j
}

func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.heapAt = len(*h)
	*h = append(*h, e)
}

func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
