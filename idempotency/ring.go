package idempotency

// ring holds the kept answers of a Memory, encoded, one after the other
// in the order they were kept, which is also the order they go in
// (oldest first, by age or for room). Its bytes are outside Go's heap
// where the system allows (mmap): the garbage collector neither scans
// them nor counts them toward its next cycle, so a store kept full costs
// its max_memory of memory, not twice as much, and pages are only
// backed once written.
//
// Positions grow without end; a position's place in buf is pos mod
// len(buf). An answer never wraps: one that would is put at the start
// of the next lap, the end of the lap left unused.
type ring struct {
	buf        []byte
	head, tail uint64 // the oldest byte in use, and where the next answer goes
	free       func() // gives buf back; nil for heap memory
	// mapped memory left behind the head goes back to the system a chunk
	// at a time, so the ring costs what it holds, not its size: every
	// byte before returned has been
	returned uint64
}

// ringChunk is how much memory behind the head goes back at once.
const ringChunk = 64 << 10

// heapRing bounds a ring on Go's heap: a smaller ring keeps fewer
// answers, never more memory than asked.
const heapRing = 256 << 20

func newRing(size int) *ring {
	// whole chunks, so that a chunk never straddles the end of a lap
	size = max(ringChunk, size/ringChunk*ringChunk)
	buf, free := allocRing(size)
	return &ring{buf: buf, free: free}
}

// advance moves the head to pos (the oldest answer left, or the tail),
// and gives back the memory of the chunks wholly behind it.
func (r *ring) advance(pos uint64) {
	r.head = pos
	if r.free == nil {
		return // heap memory: the garbage collector's, not the system's
	}
	size := uint64(len(r.buf))
	for r.returned+ringChunk <= pos {
		i := r.returned % size
		returnMemory(r.buf[i : i+ringChunk])
		r.returned += ringChunk
	}
}

// place returns where an answer of n bytes would go, and the tail past
// it; ok is false when n can never fit.
func (r *ring) place(n int) (pos, end uint64, ok bool) {
	size := uint64(len(r.buf))
	if uint64(n) > size {
		return 0, 0, false
	}
	pos = r.tail
	if pos%size+uint64(n) > size {
		pos += size - pos%size // to the start of the next lap
	}
	return pos, pos + uint64(n), true
}

// fits reports whether n bytes can go in without dropping anything.
func (r *ring) fits(n int) bool {
	_, end, ok := r.place(n)
	return ok && end-r.head <= uint64(len(r.buf))
}

// put writes b at the tail, which must fit, and returns its position.
func (r *ring) put(b []byte) uint64 {
	pos, end, _ := r.place(len(b))
	i := pos % uint64(len(r.buf))
	copy(r.buf[i:], b)
	r.tail = end
	return pos
}

// at returns a copy of the n bytes at pos, as a string.
func (r *ring) at(pos uint64, n int) string {
	i := pos % uint64(len(r.buf))
	return string(r.buf[i : i+uint64(n)])
}

// release gives the ring's memory back; it is not used again.
func (r *ring) release() {
	if r.free != nil {
		r.free()
	}
	r.buf = nil
}
