package idempotency

import (
	"net/http"
	"testing"

	"github.com/caddy-resilient/resilient/idempotency/answers"
)

func TestVerdictString(t *testing.T) {
	for v, want := range map[Verdict]string{New: "new", Replay: "replay", InFlight: "in_flight", Used: "used", Mismatch: "mismatch", 9: "verdict(9)"} {
		if got := v.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", v, got, want)
		}
	}
}

// Size is what a kept answer takes in a Memory: its encoding, body
// included only when whole, and the record's constant; so that
// MaxMemory bounds what answers really hold.
func TestAnswerSize(t *testing.T) {
	for _, a := range []*Answer{
		{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}, "X-A": {"1", "22"}}, Body: make([]byte, 1000), Whole: true},
		{Status: 502, Outcome: "reset", Whole: true},
		{Status: 200, Header: http.Header{"X-Long": {string(make([]byte, 300))}}, Body: make([]byte, 200)}, // not whole: no body
		{Status: 204},
	} {
		if got, want := a.Size(), answers.Cost(len(encodeRecord(fpA, *a))); got != want {
			t.Errorf("Size() of %+v = %d, want its encoding and the constant, %d", a.Header, got, want)
		}
	}
	if a := (&Answer{Status: 200, Body: make([]byte, 1000), Whole: true}); a.Size() < answers.Cost(1000) {
		t.Errorf("Size() %d does not count the body", a.Size())
	}
	var none *Answer
	if none.Size() != 0 {
		t.Error("a nil Answer has a size")
	}
}
