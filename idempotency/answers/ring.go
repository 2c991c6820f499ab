package answers

// ring holds a Store's values one after the other, in the order they
// were written. Its bytes are outside Go's heap where the system allows
// (mmap): the garbage collector neither scans them nor counts them
// toward its next cycle, so a full store costs its bound in memory, not
// twice as much, and pages are only backed once written.
//
// Positions grow without end; position p is at p mod len(buf). The
// bytes in use are those from head to tail: a value may wrap from the
// end of buf to its start, so that any value up to len(buf) fits in an
// empty ring and no room is lost at the end of a lap.
//
// Memory behind the head goes back to the system a chunk at a time, so
// that the ring costs what it holds, not its size; a chunk goes back
// only when no byte between head and tail is in it, whatever the lap.
type ring struct {
	buf        []byte
	head, tail uint64
	free       func() // unmaps buf; nil for heap memory
	// returned says which chunks went back to the system and hold
	// nothing since: writing into one backs it again (with zeros, at
	// once overwritten)
	returned []bool
}

// chunk is how much memory goes back to the system at once. A ring's
// length is a whole number of chunks, so that a chunk never straddles
// the end of a lap.
const chunk = 64 << 10

// heapRing bounds a ring on Go's heap, where memory cannot be mapped: a
// smaller ring keeps fewer values, never more memory than asked.
const heapRing = 256 << 20

// maxRing bounds the memory one ring maps.
const maxRing = 64 << 30

// ringSize is the length of the ring for a store bounded at bound bytes:
// the bound rounded up to whole chunks, and one chunk more, so that one
// value as large as the bound and its encoding's few extra bytes fit.
func ringSize(bound int64) int {
	n := (min(max(bound, 0), maxRing-chunk) + chunk - 1) / chunk * chunk
	return int(n + chunk)
}

// newRing returns an empty ring of size bytes (a multiple of chunk), or
// smaller on the heap when the system maps none.
func newRing(size int) *ring {
	buf, free := allocRing(size)
	if free == nil {
		buf = buf[:len(buf)/chunk*chunk]
	}
	return &ring{buf: buf, free: free, returned: make([]bool, len(buf)/chunk)}
}

// size is the ring's length.
func (r *ring) size() uint64 { return uint64(len(r.buf)) }

// used is how many bytes lie between head and tail.
func (r *ring) used() uint64 { return r.tail - r.head }

// fits reports whether n bytes more fit at the tail.
func (r *ring) fits(n int) bool { return r.used()+uint64(n) <= r.size() }

// write copies b to position pos and the next, wrapping at the end of
// buf. The caller makes sure that nothing between head and tail is
// overwritten.
func (r *ring) write(pos uint64, b []byte) {
	size := r.size()
	for len(b) > 0 {
		i := pos % size
		n := copy(r.buf[i:], b)
		r.touch(i, uint64(n))
		b, pos = b[n:], pos+uint64(n)
	}
}

// touch marks the chunks of buf[i:i+n] as backed again.
func (r *ring) touch(i, n uint64) {
	for c := i / chunk; c <= (i+n-1)/chunk; c++ {
		r.returned[c] = false
	}
}

// read copies len(dst) bytes from position pos into dst.
func (r *ring) read(pos uint64, dst []byte) {
	size := r.size()
	for len(dst) > 0 {
		i := pos % size
		n := copy(dst, r.buf[i:])
		dst, pos = dst[n:], pos+uint64(n)
	}
}

// move copies the n bytes at position from to position to, within the
// ring; the two ranges must not overlap in buf.
func (r *ring) move(to, from uint64, n int) {
	size := r.size()
	for n > 0 {
		i, j := from%size, to%size
		k := min(uint64(n), size-i, size-j)
		copy(r.buf[j:j+k], r.buf[i:i+k])
		r.touch(j, k)
		from, to, n = from+k, to+k, n-int(k)
	}
}

// advance moves the head to pos (where the oldest value left starts, or
// the tail), and gives back the memory of every chunk the bytes it
// passed were in that holds no byte still in use.
func (r *ring) advance(pos uint64) {
	from := r.head
	r.head = pos
	if r.free == nil {
		return // heap memory: the garbage collector's, not the system's
	}
	size := r.size()
	if pos-from > size {
		from = pos - size // every chunk once
	}
	for c := from / chunk * chunk; c < pos; c += chunk {
		i := c % size / chunk
		if !r.returned[i] && !r.inUse(i) {
			returnMemory(r.buf[i*chunk : (i+1)*chunk])
			r.returned[i] = true
		}
	}
}

// inUse reports whether chunk i of buf holds any byte between head and
// tail.
func (r *ring) inUse(i uint64) bool {
	used := r.used()
	if used == 0 {
		return false
	}
	size := r.size()
	// where the chunk starts, counted from the head's place in buf
	off := (i*chunk + size - r.head%size) % size
	return off < used || off+chunk > size
}

// release gives the ring's memory back; it is not used again.
func (r *ring) release() {
	if r.free != nil {
		r.free()
	}
	r.buf, r.returned = nil, nil
}
