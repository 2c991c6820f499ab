package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// shipRequest sends one operation's request to the provider: a POST
// creating shipment op, or a GET reading it.
func shipRequest(ctx context.Context, c *http.Client, p *shipping, method, op string) (*http.Response, error) {
	url := "http://" + p.up.addr + "/v1/shipments"
	var body *strings.Reader
	if method == http.MethodPost {
		body = strings.NewReader(fmt.Sprintf(`{"reference":%q,"service":"standard"}`, op))
	} else {
		url += "/" + op
		body = strings.NewReader("")
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Idempotency-Key", "key-"+op)
	res, err := c.Do(req)
	if err == nil {
		res.Body.Close()
	}
	return res, err
}

// faultsSeen sends each operation's tries in the given order and
// returns the fault every arrival met, by operation.
func faultsSeen(t *testing.T, seed uint64, ops []string, tries int) map[string][]string {
	t.Helper()
	p, err := startShipping(seed)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	p.setFaults(shippingFaults{P503: 0.2, PSlow: 0.05, Slow: time.Millisecond, PDrop: 0.1})
	c := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	for range tries {
		for _, op := range ops {
			method := http.MethodPost
			if strings.HasPrefix(op, "g") {
				method = http.MethodGet
			}
			shipRequest(context.Background(), c, p, method, op) // a drop is an error: expected
		}
	}
	out := map[string][]string{}
	for op, as := range p.arrivals() {
		for _, a := range as {
			out[op] = append(out[op], a.Fault)
		}
	}
	return out
}

// Every setup meets the same fault on the same try of the same
// operation, whatever order the operations arrive in; another seed
// meets others.
func TestShippingFaultsSameForEverySetup(t *testing.T) {
	var ops []string
	for i := range 100 {
		ops = append(ops, fmt.Sprintf("o%d", i), fmt.Sprintf("g%d", i))
	}
	a := faultsSeen(t, 7, ops, 3)
	reversed := slices.Clone(ops)
	slices.Reverse(reversed)
	b := faultsSeen(t, 7, reversed, 3)
	other := faultsSeen(t, 8, ops, 3)
	if len(a) != len(ops) {
		t.Fatalf("%d operations recorded, want %d", len(a), len(ops))
	}
	counts := map[string]int{}
	differ := 0
	for _, op := range ops {
		if !slices.Equal(a[op], b[op]) {
			t.Fatalf("%s met %q in one order, %q in the other", op, a[op], b[op])
		}
		if !slices.Equal(a[op], other[op]) {
			differ++
		}
		for _, f := range a[op] {
			counts[f]++
		}
		if strings.HasPrefix(op, "g") && slices.Contains(a[op], faultDrop) {
			t.Fatalf("GET %s was dropped: only POSTs are", op)
		}
	}
	if differ == 0 {
		t.Fatal("seeds 7 and 8 gave every operation the same faults")
	}
	// 600 arrivals: 20% 503, 5% slow; 300 POSTs: 10% dropped
	if n := counts[fault503]; n < 80 || n > 160 {
		t.Errorf("%d of 600 arrivals answered 503, want about 120", n)
	}
	if n := counts[faultDrop]; n < 12 || n > 50 {
		t.Errorf("%d of 300 POST arrivals dropped, want about 30", n)
	}
	if n := counts[faultSlow]; n < 10 || n > 55 {
		t.Errorf("%d of 600 arrivals slow, want about 30", n)
	}
}

// A dropped POST is executed and then cut: the client gets no answer.
func TestShippingDropExecutesThenCuts(t *testing.T) {
	p, err := startShipping(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	p.setFaults(shippingFaults{PDrop: 1})
	c := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	if _, err := shipRequest(context.Background(), c, p, http.MethodPost, "o1"); err == nil {
		t.Fatal("a dropped POST got an answer")
	}
	if res, err := shipRequest(context.Background(), c, p, http.MethodGet, "g1"); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET with drops on: %v, %v; want 200 (only POSTs are dropped)", res, err)
	}
	as := p.arrivals()["o1"]
	if len(as) != 1 || !as[0].Executed || !as[0].Cut || as[0].Status != 0 || as[0].Key != "key-o1" {
		t.Fatalf("arrivals %+v, want one executed, cut, unanswered, with its key", as)
	}
}

// A slow answer pending when the outage closes its connection is an
// execution cut off by the provider; one whose client leaves first is
// not.
func TestShippingOutageCutsPendingSlowAnswer(t *testing.T) {
	p, err := startShipping(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	p.setFaults(shippingFaults{PSlow: 1, Slow: 10 * time.Second})
	c := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := shipRequest(ctx, c, p, http.MethodPost, "left"); err == nil {
		t.Fatal("a 10s answer came within 100ms")
	}

	done := make(chan error, 1)
	go func() {
		_, err := shipRequest(context.Background(), c, p, http.MethodPost, "cut")
		done <- err
	}()
	waitFor(t, func() bool { return len(p.arrivals()["cut"]) == 1 })
	if err := p.up.refuse(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the pending POST got an answer through the outage")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the outage did not end the pending POST")
	}
	waitFor(t, func() bool { return p.arrivals()["cut"][0].Executed })
	left := p.arrivals()["left"]
	if len(left) != 1 || !left[0].Executed || left[0].Cut {
		t.Fatalf("the POST whose client left: %+v, want executed and not cut", left)
	}
	if a := p.arrivals()["cut"][0]; !a.Cut || a.Status != 0 {
		t.Fatalf("the POST cut by the outage: %+v, want cut and unanswered", a)
	}
}

// waitFor polls cond for up to 2s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 2s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
