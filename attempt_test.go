package resilient

import (
	"context"
	"net/http/httptrace"
	"testing"
	"time"
)

// tracedAttempt returns an attempt whose watchdog cancels ctx, and its
// trace, as send sets them up.
func tracedAttempt(t *testing.T, h2 bool) (*attempt, *httptrace.ClientTrace, context.Context) {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	t.Cleanup(func() { cancel(nil) })
	a := &attempt{h2c: h2, start: time.Now()}
	a.w.init(cancel, time.Time{}, time.Time{}, time.Time{})
	t.Cleanup(func() { a.w.stop() })
	return a, a.trace(), ctx
}

// Over HTTP/2 a loser whose stream has its connection but not yet its
// headers is canceled once they are written: it then surely reached the
// upstream, where canceling it at once would leave that unknown.
func TestAttemptLoserOverHTTP2WaitsForItsHeaders(t *testing.T) {
	a, tr, ctx := tracedAttempt(t, true)
	tr.GotConn(httptrace.GotConnInfo{})
	a.loseRace()
	if ctx.Err() != nil {
		t.Fatal("canceled before its headers were written: whether it went out is then unknown")
	}
	tr.WroteHeaders()
	if context.Cause(ctx) != errHedgeLost {
		t.Fatalf("cause %v once its headers were written, want errHedgeLost", context.Cause(ctx))
	}
	if a.neverSent(context.Canceled, false) {
		t.Fatal("its headers were written: it was sent")
	}
}

// A loser that had no connection yet is canceled at once, and the
// stream that its connection would start is canceled before it begins.
func TestAttemptLoserBeforeItsConnectionNeverLeaves(t *testing.T) {
	a, tr, ctx := tracedAttempt(t, true)
	a.loseRace()
	if ctx.Err() == nil {
		t.Fatal("a loser with no connection yet was not canceled at once")
	}
	tr.GotConn(httptrace.GotConnInfo{})
	if !a.neverSent(context.Canceled, false) {
		t.Fatal("canceled before its connection came, it cannot have been sent")
	}
}

// Over HTTP/2, a stream canceled with its headers not yet written may
// still have them written: it counts as sent, unless RoundTrip ended
// with its context on (net/http then waited for the stream's writer).
func TestAttemptHTTP2StreamCanceledEarlyCountsAsSent(t *testing.T) {
	a, tr, _ := tracedAttempt(t, true)
	tr.GotConn(httptrace.GotConnInfo{})
	if a.neverSent(context.Canceled, false) {
		t.Fatal("canceled with its headers maybe on their way: counted as never sent")
	}
	if !a.neverSent(nil, true) {
		t.Fatal("its writer done and no headers written: counted as sent")
	}
}

// The hook HTTP/2 needs is set only when the connection speaks it.
func TestAttemptHTTP1HasNoHeadersHook(t *testing.T) {
	a, tr, _ := tracedAttempt(t, false)
	tr.GotConn(httptrace.GotConnInfo{})
	if tr.WroteHeaders != nil || a.has(flagH2) {
		t.Fatal("an HTTP/1 attempt got the HTTP/2 headers hook")
	}
}
