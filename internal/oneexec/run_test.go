package oneexec

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"testing"
	"time"
)

// naiveGateway is a reverse proxy that deduplicates nothing (Go's
// httputil.ReverseProxy), with the verdict headers the check reads set
// honestly: what the end-to-end run must catch when a gateway lets
// repeats through.
func naiveGateway(t *testing.T, name, upstream string) Gateway {
	target, _ := url.Parse("http://" + upstream)
	rp := httputil.NewSingleHostReverseProxy(target)
	direct := rp.Director
	rp.Director = func(r *http.Request) {
		direct(r)
		r.Header.Set(HeaderGateway, name)
	}
	rp.ModifyResponse = func(res *http.Response) error {
		res.Header.Set(HeaderOutcome, "ok")
		if releasing(res.StatusCode) {
			res.Header.Set(HeaderExecuted, "no")
		} else {
			res.Header.Set(HeaderExecuted, "yes")
		}
		return nil
	}
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		w.Header().Set(HeaderOutcome, "reset")
		w.Header().Set(HeaderExecuted, "maybe")
		w.WriteHeader(http.StatusBadGateway)
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return Gateway{Name: name, Addr: srv.Listener.Addr().(*net.TCPAddr).String()}
}

// The whole run, against two gateways that let every repeat through:
// the check finds keys executed more than once, and nothing else (they
// pass every answer on as the upstream gave it); the events run at
// their time, and the window they open exempts the keys under way.
func TestRunCatchesRepeats(t *testing.T) {
	timing := Timing{
		Patience: [2]time.Duration{20 * time.Millisecond, 300 * time.Millisecond},
		Deadline: [2]time.Duration{50 * time.Millisecond, 200 * time.Millisecond},
		Total:    200 * time.Millisecond, CompleteWithin: 300 * time.Millisecond,
		SlowMin: 100 * time.Millisecond, SlowMax: 200 * time.Millisecond, Hang: 400 * time.Millisecond,
	}
	up, err := NewUpstream(7, timing)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	var ran []string
	event := func(name string) func() error {
		return func() error { ran = append(ran, name); return nil }
	}
	rep, err := Run(context.Background(), Config{
		Seed: 7, Duration: 2 * time.Second, Clients: 4, Upstream: up, Timing: timing, Grace: 50 * time.Millisecond,
		Gateways: []Gateway{naiveGateway(t, "a", up.Addr()), naiveGateway(t, "b", up.Addr())},
		Events: []Event{
			{At: 1200 * time.Millisecond, Name: "up", Up: true, Do: event("up")},
			{At: 800 * time.Millisecond, Name: "down", Down: true, Do: event("down")},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(rep.Summary())
	if !slices.Equal(ran, []string{"down", "up"}) {
		t.Errorf("events ran %v, want down then up, in the order of their times", ran)
	}
	if len(rep.Windows) != 1 || rep.ExemptKeys == 0 {
		t.Errorf("windows %v, %d keys exempt: want the one from down to up, and keys under way in it", rep.Windows, rep.ExemptKeys)
	}
	kinds := rep.ViolationsByKind()
	if rep.KeysTwice == 0 || kinds[vTwice] != rep.KeysTwice {
		t.Errorf("keys executed twice: %d (violations %v); want some, through gateways that let repeats through", rep.KeysTwice, kinds)
	}
	if len(kinds) != 1 {
		t.Errorf("violations of kinds %v, want only %q: %v", kinds, vTwice, rep.Violations)
	}
	if rep.FirstsIdentical == 0 || rep.Sweep == 0 {
		t.Errorf("%d first answers checked, %d sweep requests: want some of each", rep.FirstsIdentical, rep.Sweep)
	}
}
