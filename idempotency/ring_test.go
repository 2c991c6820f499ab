package idempotency

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestRingPutsWholeAnswersAndWraps(t *testing.T) {
	r := newRing(100) // rounded up to a chunk
	t.Cleanup(r.release)
	size := len(r.buf)
	if size != ringChunk {
		t.Fatalf("a ring of %d bytes, want one chunk (%d)", size, ringChunk)
	}
	if r.fits(size + 1) {
		t.Fatal("an answer larger than the ring fits")
	}
	n := size / 10
	a := r.put(bytes.Repeat([]byte("a"), 6*n))
	if !r.fits(size-6*n) || r.fits(size-6*n+1) {
		t.Fatal("the room left is not what the first answer left")
	}
	b := r.put(bytes.Repeat([]byte("b"), 3*n))
	// what is left at the end of the lap is too short: the next answer
	// goes to the next lap, which the first answer still holds
	if r.fits(2 * n) {
		t.Fatal("an answer fits over the oldest one, still in use")
	}
	r.advance(b) // the oldest went
	if !r.fits(2 * n) {
		t.Fatal("no room at the start of the next lap once the oldest went")
	}
	c := r.put(bytes.Repeat([]byte("c"), 2*n))
	if c != uint64(size) || r.at(b, 3*n) != string(bytes.Repeat([]byte("b"), 3*n)) || r.at(c, 2*n) != string(bytes.Repeat([]byte("c"), 2*n)) {
		t.Fatalf("positions a %d b %d c %d, or their bytes, are wrong", a, b, c)
	}
	r.advance(r.tail)
	if r.returned != r.tail/ringChunk*ringChunk {
		t.Errorf("memory given back up to %d, want every chunk behind the head (%d)", r.returned, r.tail/ringChunk*ringChunk)
	}
}

// Answers of every size, kept far past MaxMemory, come back as they were
// kept, or not at all: the ring's laps never mix them up.
func TestMemoryRingKeepsAnswersIntactAcrossLaps(t *testing.T) {
	m := newTestMemory(t, Config{MaxMemory: 20 << 10})
	rnd := rand.New(rand.NewPCG(1, 2))
	kept := map[int][]byte{}
	for i := range 2000 {
		body := bytes.Repeat([]byte{byte(i)}, rnd.IntN(3000))
		k := NewKey(nil, fmt.Sprint(i))
		begin(t, m, k, New, nil).Claim.Keep(fpA, Answer{Status: 200, Body: body, Whole: true})
		kept[i] = body
		if _, b := m.Len(); b > 20<<10 {
			t.Fatalf("after %d answers: %d bytes kept, past MaxMemory", i+1, b)
		}
	}
	replayed := 0
	for i := 1999; i >= 1900; i-- {
		res, err := m.Begin(t.Context(), NewKey(nil, fmt.Sprint(i)), 0, 0, fpOf(fpA, nil))
		if err != nil {
			t.Fatal(err)
		}
		switch res.Verdict {
		case Replay:
			replayed++
			if !bytes.Equal(res.Answer.Body, kept[i]) {
				t.Fatalf("answer %d came back as %d other bytes", i, len(res.Answer.Body))
			}
		case New:
			res.Claim.Release() // dropped for room
		default:
			t.Fatalf("answer %d: verdict %v", i, res.Verdict)
		}
	}
	if replayed == 0 {
		t.Fatal("none of the newest answers was kept")
	}
}
