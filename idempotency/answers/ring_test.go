package answers

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// pattern returns n bytes that tell where they belong: value i's bytes
// are never another's, nor zeros.
func pattern(i, n int) []byte {
	b := make([]byte, n)
	if n == 0 {
		return b
	}
	b[0] = byte(i) | 1
	for f := 1; f < n; f *= 2 {
		copy(b[f:], b[:f])
	}
	for j := 0; j+8 <= n; j += 4096 {
		binary.LittleEndian.PutUint64(b[j:], uint64(i)<<8|uint64(j>>12)|1<<63)
	}
	return b
}

func TestRingSize(t *testing.T) {
	for _, tc := range []struct {
		bound int64
		want  int
	}{
		{0, chunk},
		{1, 2 * chunk},
		{chunk, 2 * chunk},
		{chunk + 1, 3 * chunk},
		{64 << 20, 64<<20 + chunk},
		{1_000_001, (1_000_001/chunk+1)*chunk + chunk},
	} {
		if got := ringSize(tc.bound); got != tc.want || got%chunk != 0 || int64(got) < tc.bound+chunk {
			t.Errorf("ringSize(%d) = %d, want %d: whole chunks, and a chunk past the bound", tc.bound, got, tc.want)
		}
	}
}

// A value that crosses the end of a lap wraps to the start and reads
// back whole; an empty ring takes a value as long as itself, wherever
// its head is.
func TestRingWraps(t *testing.T) {
	r := newRing(2 * chunk)
	t.Cleanup(r.release)
	size := len(r.buf)
	first := pattern(1, size-100)
	r.write(r.tail, first)
	r.tail += uint64(len(first))
	r.advance(r.tail) // gone
	second := pattern(2, 300)
	if !r.fits(size) || r.fits(size+1) {
		t.Fatal("an empty ring does not take a value of its size, or takes more")
	}
	pos := r.tail
	r.write(pos, second)
	r.tail += uint64(len(second))
	got := make([]byte, len(second))
	r.read(pos, got)
	if !bytes.Equal(got, second) {
		t.Fatal("a value across the end of the lap came back changed")
	}
	whole := pattern(3, size)
	r.advance(r.tail)
	pos = r.tail
	r.write(pos, whole)
	r.tail += uint64(size)
	got = make([]byte, size)
	r.read(pos, got)
	if !bytes.Equal(got, whole) {
		t.Fatal("a value as long as the ring came back changed")
	}
}

// Memory goes back to the system only for chunks that hold no byte in
// use, in any lap: values written over several laps, the oldest leaving
// as new ones come, all read back as written, and once all are gone
// every chunk went back.
func TestRingGivesBackOnlyFreeChunks(t *testing.T) {
	r := newRing(8 * chunk)
	t.Cleanup(r.release)
	if r.free == nil {
		t.Skip("no mapped memory on this system: nothing goes back")
	}
	type value struct {
		pos uint64
		b   []byte
	}
	var live []value
	sizes := []int{chunk - 1, 3*chunk + 17, 100, chunk, 2*chunk + 1, 5000, 7 * chunk}
	for i := range 200 {
		b := pattern(i, sizes[i%len(sizes)])
		for !r.fits(len(b)) {
			live = live[1:]
			if len(live) > 0 {
				r.advance(live[0].pos)
			} else {
				r.advance(r.tail)
			}
		}
		v := value{r.tail, b}
		r.write(v.pos, b)
		r.tail += uint64(len(b))
		live = append(live, v)
		for _, v := range live {
			got := make([]byte, len(v.b))
			r.read(v.pos, got)
			if !bytes.Equal(got, v.b) {
				t.Fatalf("after value %d: a value in use came back changed (a chunk holding it went back)", i)
			}
		}
		for c, ret := range r.returned {
			if ret && r.inUse(uint64(c)) {
				t.Fatalf("after value %d: chunk %d went back while in use", i, c)
			}
		}
	}
	r.advance(r.tail)
	for c, ret := range r.returned {
		if !ret {
			t.Errorf("chunk %d kept though the ring is empty", c)
		}
	}
}
