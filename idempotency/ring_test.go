package idempotency

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestRingPutsWholeAnswersAndWraps(t *testing.T) {
	r := newRing(100)
	t.Cleanup(r.release)
	if r.fits(101) {
		t.Fatal("an answer larger than the ring fits")
	}
	a := r.put(bytes.Repeat([]byte("a"), 60))
	if !r.fits(40) || r.fits(41) {
		t.Fatal("room left after 60 of 100 bytes is not 40")
	}
	b := r.put(bytes.Repeat([]byte("b"), 30))
	// 10 bytes are left at the end of the lap: 20 must go to the next,
	// which the first answer still holds
	if r.fits(20) {
		t.Fatal("an answer fits over the oldest one, still in use")
	}
	r.head = b // the oldest went
	if !r.fits(20) {
		t.Fatal("no room at the start of the next lap once the oldest went")
	}
	c := r.put(bytes.Repeat([]byte("c"), 20))
	if c != 100 || r.at(b, 30) != string(bytes.Repeat([]byte("b"), 30)) || r.at(c, 20) != string(bytes.Repeat([]byte("c"), 20)) {
		t.Fatalf("positions a %d b %d c %d, or their bytes, are wrong", a, b, c)
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
