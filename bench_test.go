package resilient

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// These benchmarks measure the transport's own cost per request: the
// same loopback upstream is called through Caddy's bare HTTP transport
// and through the resilient one, so the difference is what the
// classification, breaker, pool slot, watchdog, trace, placeholders and
// log check add. The serial ones measure one request's latency; the
// Parallel ones keep both CPUs busy, so their ns/op follows the CPU
// each request costs. Run them with
//
//	go test -run XXX -bench Transport -benchmem -count 6 .
//
// The load-level comparison against Caddy, nginx and HAProxy is the
// harness in bench/.

// BenchmarkTransportHTTP is the baseline: reverseproxy.HTTPTransport.
func BenchmarkTransportHTTP(b *testing.B) {
	benchTransport(b, http.MethodGet, false, benchHTTP(b))
}

// BenchmarkTransportResilient is the transport with its defaults:
// retries, budget and breaker on.
func BenchmarkTransportResilient(b *testing.B) {
	benchTransport(b, http.MethodGet, false, benchResilient(b, new(Transport)))
}

// BenchmarkTransportResilientBare is the transport with retries and the
// breaker off: what is left is the timeouts, pool slot and outcome.
func BenchmarkTransportResilientBare(b *testing.B) {
	t := &Transport{Retry: &Retry{Disabled: true}, Breaker: &Breaker{Disabled: true}}
	benchTransport(b, http.MethodGet, false, benchResilient(b, t))
}

// BenchmarkTransportHTTPPOST is BenchmarkTransportResilientPOST's baseline.
func BenchmarkTransportHTTPPOST(b *testing.B) {
	benchTransport(b, http.MethodPost, false, benchHTTP(b))
}

// BenchmarkTransportResilientPOST sends a small body, which the
// transport buffers for replay because it carries an Idempotency-Key.
func BenchmarkTransportResilientPOST(b *testing.B) {
	benchTransport(b, http.MethodPost, false, benchResilient(b, new(Transport)))
}

// BenchmarkTransportResilientPOSTNoKey sends a POST without a key: it
// is not retried once sent, so nothing is kept for replay.
func BenchmarkTransportResilientPOSTNoKey(b *testing.B) {
	benchTransportKey(b, http.MethodPost, false, "", benchResilient(b, new(Transport)))
}

// BenchmarkTransportResilientIdempotencyNoKey is
// BenchmarkTransportResilientPOSTNoKey with an idempotency block: what
// the idempotency step costs a request that carries no key.
func BenchmarkTransportResilientIdempotencyNoKey(b *testing.B) {
	benchTransportKey(b, http.MethodPost, false, "", benchResilient(b, &Transport{Idempotency: new(Idempotency)}))
}

// BenchmarkTransportResilientHedge is BenchmarkTransportResilient with
// `hedge { after p95 }` and `deadline`: the upstream answers long
// before the delay, so no hedge is sent; what is left is the tracker,
// the hedge timer set and taken back, and reading a deadline header.
func BenchmarkTransportResilientHedge(b *testing.B) {
	t := &Transport{Hedge: new(Hedge), Deadline: new(Deadline)}
	benchTransport(b, http.MethodGet, false, benchResilient(b, t))
}

// BenchmarkTransportResilientFallback is BenchmarkTransportResilient
// with a fallback written: every healthy answer is captured as it
// streams and kept (SPEC §15: at most 2 allocations more).
func BenchmarkTransportResilientFallback(b *testing.B) {
	t := &Transport{Fallback: new(Fallback)}
	benchTransport(b, http.MethodGet, false, benchResilient(b, t))
}

// BenchmarkTransportHTTPParallel is BenchmarkTransportHTTP from
// several goroutines at once.
func BenchmarkTransportHTTPParallel(b *testing.B) {
	benchTransport(b, http.MethodGet, true, benchHTTP(b))
}

// BenchmarkTransportResilientParallel is BenchmarkTransportResilient
// from several goroutines at once.
func BenchmarkTransportResilientParallel(b *testing.B) {
	benchTransport(b, http.MethodGet, true, benchResilient(b, new(Transport)))
}

type benchBuild func(caddy.Context) (http.RoundTripper, func() error)

func benchHTTP(b *testing.B) benchBuild {
	return func(ctx caddy.Context) (http.RoundTripper, func() error) {
		ht := new(reverseproxy.HTTPTransport)
		if err := ht.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		return ht, ht.Cleanup
	}
}

func benchResilient(b *testing.B, t *Transport) benchBuild {
	return func(ctx caddy.Context) (http.RoundTripper, func() error) {
		if err := t.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		if err := t.Validate(); err != nil {
			b.Fatal(err)
		}
		// Without a loaded config ctx.Logger is a development logger at
		// debug level, which would write every request's entry; Caddy
		// logs at info by default, so only the level check is paid.
		t.logger = zap.New(zapcore.NewCore(
			zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
			zapcore.AddSync(io.Discard), zapcore.InfoLevel))
		return t, t.Cleanup
	}
}

// benchTransport calls the transport built by build once per
// iteration, against one keep-alive loopback upstream, with a request
// shaped as Caddy's reverse proxy hands it over: a cancelable context
// holding a fresh Replacer and the server (without them the resilient
// transport takes it for a health check and passes it through).
func benchTransport(b *testing.B, method string, parallel bool, build benchBuild) {
	key := ""
	if method == http.MethodPost {
		key = "k-1"
	}
	benchTransportKey(b, method, parallel, key, build)
}

// benchTransportKey is benchTransport with the Idempotency-Key of every
// request given ("": none).
func benchTransportKey(b *testing.B, method string, parallel bool, key string, build benchBuild) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	}))
	defer upstream.Close()
	target, err := url.Parse(upstream.URL)
	if err != nil {
		b.Fatal(err)
	}

	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	rt, cleanup := build(ctx)
	defer func() {
		if err := cleanup(); err != nil {
			b.Error(err)
		}
	}()

	server := new(caddyhttp.Server)
	const body = `{"order":"o-1","amount":100}`
	roundTrip := func() error {
		// cancelable, as the context of a request net/http serves is
		cancelCtx, cancelReq := context.WithCancel(context.Background())
		defer cancelReq()
		// the replacer is used as Caddy uses it around a round trip: the
		// server adds its HTTP variables, the reverse proxy sets the
		// upstream's before the transport runs and the latency after
		repl := caddy.NewReplacer()
		repl.Map(func(string) (any, bool) { return nil, false })
		for _, k := range upstreamPlaceholders {
			repl.Set("http.reverse_proxy.upstream."+k, target.Host)
		}
		reqCtx := context.WithValue(cancelCtx, caddy.ReplacerCtxKey, repl)
		reqCtx = context.WithValue(reqCtx, caddyhttp.ServerCtxKey, server)
		var rb io.Reader
		if method == http.MethodPost {
			// as Caddy hands a client's body over: a reader net/http
			// does not know to be in memory
			rb = clientBody{strings.NewReader(body)}
		}
		req, err := http.NewRequestWithContext(reqCtx, method, "http://"+target.Host+"/bench", rb)
		if err != nil {
			return err
		}
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		t0 := time.Now()
		res, err := rt.RoundTrip(req)
		if err != nil {
			return err
		}
		d := time.Since(t0)
		repl.Set("http.reverse_proxy.upstream.latency", d)
		repl.Set("http.reverse_proxy.upstream.latency_ms", d.Seconds()*1e3)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", res.StatusCode)
		}
		return nil
	}
	// open the keep-alive connection outside the timing
	if err := roundTrip(); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	if !parallel {
		for b.Loop() {
			if err := roundTrip(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(4) // 8 goroutines on 2 CPUs, within the 32 idle connections kept
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := roundTrip(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// clientBody stands for the body of a request Caddy's server read: not
// one of the in-memory readers net/http treats specially.
type clientBody struct{ io.Reader }

func (clientBody) Close() error { return nil }

// upstreamPlaceholders are the ones Caddy's reverse proxy sets for each
// upstream it tries, before the round trip.
var upstreamPlaceholders = []string{"address", "hostport", "host", "port", "requests", "max_requests", "fails"}
