package idempotency

import (
	"net/http"
	"testing"
)

func TestVerdictString(t *testing.T) {
	for v, want := range map[Verdict]string{New: "new", Replay: "replay", InFlight: "in_flight", Used: "used", Mismatch: "mismatch", 9: "verdict(9)"} {
		if got := v.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", v, got, want)
		}
	}
}

// Size counts the body, header names and values and the outcome, so
// that MaxMemory bounds what answers really hold.
func TestAnswerSize(t *testing.T) {
	a := &Answer{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}, "X-A": {"1", "22"}}, Body: make([]byte, 1000), Whole: true}
	want := int64(answerOverhead + 1000 + len("Content-Type") + len("text/plain") + len("X-A") + 1 + 2)
	if got := a.Size(); got != want {
		t.Errorf("Size() = %d, want %d", got, want)
	}
	a.Outcome = "reset"
	if got := a.Size(); got != want+5 {
		t.Errorf("with an outcome: Size() = %d, want %d", got, want+5)
	}
	var none *Answer
	if none.Size() != 0 {
		t.Error("a nil Answer has a size")
	}
}
