package resilient

import (
	"container/heap"
	"sync"
	"time"
)

// Every attempt has a watchdog with a deadline that almost never comes:
// a healthy request ends long before its attempt bound. A runtime timer
// per attempt would cost two allocations on every request; instead one
// process-wide timer serves all watchdogs, through a heap of their
// deadlines. It wakes for the earliest one; a watchdog that is done
// leaves the heap, and the timer, if it was set for it, finds nothing
// due and sets itself for the next.
//
// The scheduler is process-wide, not per transport: a watchdog may
// outlive the config that started it (a reload lets requests finish).

// sched is the process-wide scheduler.
var sched = &scheduler{}

type scheduler struct {
	mu    sync.Mutex
	due   deadlines
	timer *time.Timer
	next  time.Time // what the timer is set for; zero: not set
}

// timed is what the scheduler fires: a watchdog, or the hedge timer of
// an exchange. Its slot is guarded by the scheduler's lock; fire runs
// outside it, and must not block.
type timed interface {
	slot() *schedSlot
	fire()
}

// schedSlot is a timed's place in the scheduler.
type schedSlot struct {
	dueAt  time.Time
	dueIdx int // its place in the heap, plus one; 0: not in it
}

// deadlines is a min-heap of timeds by their deadline.
type deadlines []timed

func (d deadlines) Len() int           { return len(d) }
func (d deadlines) Less(i, j int) bool { return d[i].slot().dueAt.Before(d[j].slot().dueAt) }
func (d deadlines) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].slot().dueIdx, d[j].slot().dueIdx = i+1, j+1
}
func (d *deadlines) Push(x any) {
	w := x.(timed)
	*d = append(*d, w)
	w.slot().dueIdx = len(*d)
}
func (d *deadlines) Pop() any {
	old := *d
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*d = old[:len(old)-1]
	w.slot().dueIdx = 0
	return w
}

// set makes w's fire run at at, or not at all when at is zero.
func (s *scheduler) set(w timed, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := w.slot()
	switch {
	case at.IsZero():
		if sl.dueIdx > 0 {
			heap.Remove(&s.due, sl.dueIdx-1)
		}
		return
	case sl.dueIdx > 0:
		sl.dueAt = at
		heap.Fix(&s.due, sl.dueIdx-1)
	default:
		sl.dueAt = at
		heap.Push(&s.due, w)
	}
	if s.next.IsZero() || at.Before(s.next) {
		s.arm(at)
	}
}

// arm sets the timer for at. Called with mu held.
func (s *scheduler) arm(at time.Time) {
	s.next = at
	d := time.Until(at)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.run)
		return
	}
	s.timer.Reset(d)
}

// run fires the watchdogs that are due, and sets the timer for the next.
func (s *scheduler) run() {
	var fire []timed
	s.mu.Lock()
	now := time.Now()
	s.next = time.Time{}
	for len(s.due) > 0 && !s.due[0].slot().dueAt.After(now) {
		fire = append(fire, heap.Pop(&s.due).(timed))
	}
	if len(s.due) > 0 {
		s.arm(s.due[0].slot().dueAt)
	}
	s.mu.Unlock()
	// outside the lock: a watchdog takes its own lock, and sets itself
	// anew if its deadline moved
	for _, w := range fire {
		w.fire()
	}
}
