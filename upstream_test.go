package resilient

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// upstreamTransport provisions a transport as Caddy would, with retries
// off so that each request is one attempt.
func upstreamTransport(t *testing.T) *Transport {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	tr := &Transport{Retry: &Retry{Disabled: true}}
	if err := tr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Cleanup() })
	tr.logger = zap.NewNop() // 10,000 refusals need no log
	return tr
}

// upstreamRequest is a request as Caddy's reverse proxy hands it over.
func upstreamRequest(t *testing.T, addr string) *http.Request {
	t.Helper()
	ctx := context.WithValue(context.Background(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.ServerCtxKey, new(caddyhttp.Server))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestUpstreamStateStaysBoundedWithDynamicUpstreams(t *testing.T) {
	freshLabels(t)
	tr := upstreamTransport(t)
	// 10,000 distinct dial addresses, as `reverse_proxy {http.request.host}:1`
	// would see them; port 1 refuses at once on loopback
	for i := 0; i < 10_000; i++ {
		addr := fmt.Sprintf("127.%d.%d.%d:1", 1+i/65536, i/256%256, i%256)
		res, err := tr.RoundTrip(upstreamRequest(t, addr))
		if err == nil {
			res.Body.Close()
			t.Fatalf("%s answered", addr)
		}
	}
	if n := tr.upstreams.n.Load(); n > maxUpstreams {
		t.Fatalf("the transport holds %d upstreams, want at most %d", n, maxUpstreams)
	}
	held := 0
	tr.upstreams.m.Range(func(any, any) bool { held++; return true })
	if int64(held) != tr.upstreams.n.Load() {
		t.Fatalf("the count says %d, the table holds %d", tr.upstreams.n.Load(), held)
	}
	if n := len(allBreakers()); n > maxUpstreams+100 {
		t.Fatalf("the registry holds %d breakers", n)
	}
	metrics.mu.Lock()
	labels := len(metrics.labels)
	metrics.mu.Unlock()
	if labels > maxUpstreamLabels {
		t.Fatalf("%d upstream labels remembered, want at most %d", labels, maxUpstreamLabels)
	}
}

func TestUpstreamIdleStateIsDropped(t *testing.T) {
	tr := upstreamTransport(t)
	clock := &fakeClock{now: time.Now()}
	tr.upstreams.clock = clock.Now
	busy := tr.upstreams.get("10.9.9.1:443")
	idle := tr.upstreams.get("10.9.9.2:443")
	busy.begin(clock.now) // a long download, say
	idle.begin(clock.now)
	idle.done()
	clock.Advance(idleTTL + time.Second)
	tr.upstreams.sweep(maxUpstreams)
	if _, ok := tr.upstreams.m.Load("10.9.9.2:443"); ok {
		t.Error("an upstream idle for longer than idleTTL is still held")
	}
	if _, ok := tr.upstreams.m.Load("10.9.9.1:443"); !ok {
		t.Error("an upstream with a request under way was dropped")
	}
	if len(lookupBreakers("10.9.9.2:443")) != 0 {
		t.Error("the closed breaker of the dropped upstream is still registered")
	}
	busy.done()
}
