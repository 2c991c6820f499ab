package resilient

import (
	"testing"
	"time"
)

func TestBudgetRatioPlusFloor(t *testing.T) {
	ratio, floor := 0.2, 2
	b := newBudget(&Budget{Ratio: &ratio, MinPerSecond: &floor})
	allowed := func(now time.Time, tries int) int {
		n := 0
		for i := 0; i < tries; i++ {
			if b.allow(now) {
				n++
			}
		}
		return n
	}
	t0 := time.Unix(1_000_000, 0)
	for i := 0; i < 10; i++ {
		b.request(t0)
	}
	// the floor lets 2 through, the ratio 2 more (20% of 10)
	if got := allowed(t0, 10); got != 4 {
		t.Fatalf("allowed %d retries for 10 requests, want 2 + 2", got)
	}
	// a new second: a fresh floor, but the window's ratio is spent
	if got := allowed(t0.Add(time.Second), 10); got != 2 {
		t.Fatalf("allowed %d retries in the next second, want the floor of 2", got)
	}
	// past the window everything is forgotten
	t2 := t0.Add(11 * time.Second)
	for i := 0; i < 100; i++ {
		b.request(t2)
	}
	if got := allowed(t2, 100); got != 22 {
		t.Fatalf("allowed %d retries for 100 requests, want 2 + 20", got)
	}
}

func TestBudgetFloorIsPerSlidingSecond(t *testing.T) {
	zero, floor := 0.0, 10
	b := newBudget(&Budget{Ratio: &zero, MinPerSecond: &floor})
	// ten just before a second boundary, and ten just after it would be
	// twenty in 20ms
	t0 := time.Unix(1_000_000, 0).Add(990 * time.Millisecond)
	n := 0
	for i := 0; i < 40; i++ {
		if b.allow(t0.Add(time.Duration(i) * time.Millisecond / 2)) {
			n++
		}
	}
	if n != 10 {
		t.Fatalf("%d floor retries within 20ms across a second boundary, want 10", n)
	}
	if !b.allow(t0.Add(time.Second)) {
		t.Fatal("a second later the floor is still spent")
	}
}

func TestBudgetOff(t *testing.T) {
	if b := newBudget(&Budget{Disabled: true}); b != nil || !b.allow(time.Now()) {
		t.Fatal("a disabled budget must allow every retry")
	}
}
