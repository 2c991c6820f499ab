package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-resilient/resilient/internal/oneexec"
)

// The setups under test, in table order.
const (
	setupCaddyHTTP   = "caddy-http"          // Caddy, transport http (+ lb_retries where a scenario retries)
	setupResilient   = "resilient"           // Caddy, transport resilient
	setupResilientNB = "resilient-nobreaker" // transport resilient with `breaker off` (budget only)
	setupResilientRL = "resilient-ratelimit" // transport resilient with the scenario's rate_limit
	setupNginx       = "nginx"
	setupHAProxy     = "haproxy"
	setupFleet       = "fleet"    // S9: three gateways with transport resilient, one fleet through Redis
	setupNoFleet     = "no-fleet" // S9: the same three gateways, each on its own

	// transport resilient with the block the scenario gives in Variants
	setupResilientNoBudget = "resilient-nobudget"   // `retry { budget off }`
	setupResilientAttempts = "resilient-attempts4"  // `retry { attempts 4 }`
	setupResilientIdem     = "resilient-idem"       // an `idempotency` block
	setupResilientIdemWait = "resilient-idem-wait"  // an `idempotency` block whose repeats wait for the first
	setupResilientHedgeP95 = "resilient-hedge-p95"  // `hedge { after p95 }`
	setupResilientHedge50  = "resilient-hedge-50ms" // `hedge { after 50ms }`
	setupResilientFallback = "resilient-fallback"   // a `fallback` block
)

var allSetups = []string{setupCaddyHTTP, setupResilient, setupResilientNB, setupResilientNoBudget, setupResilientAttempts, setupResilientRL,
	setupResilientIdem, setupResilientIdemWait, setupResilientHedgeP95, setupResilientHedge50, setupResilientFallback,
	setupNginx, setupHAProxy, setupFleet, setupNoFleet,
	setupSeedDirect, setupSeedGateway, setupThinGateway, setupLibraryGateway}

// isCaddy reports whether setup runs this repository's Caddy.
func isCaddy(setup string) bool {
	switch setup {
	case setupCaddyHTTP, setupFleet, setupNoFleet, setupSeedGateway, setupThinGateway, setupLibraryGateway:
		return true
	}
	return isResilient(setup)
}

// isResilient reports whether setup is one Caddy with transport resilient.
func isResilient(setup string) bool {
	switch setup {
	case setupResilient, setupResilientNB, setupResilientNoBudget, setupResilientAttempts, setupResilientRL,
		setupResilientIdem, setupResilientIdemWait, setupResilientHedgeP95, setupResilientHedge50, setupResilientFallback:
		return true
	}
	return false
}

// block is the body of `transport resilient { … }` of a resilient setup
// in sc.
func (sc *scenario) block(setup string) string {
	switch setup {
	case setupResilient:
		return sc.Resilient
	case setupResilientNB:
		return sc.ResilientNoBreaker
	case setupResilientRL:
		return sc.ResilientRateLimit
	}
	return sc.Variants[setup]
}

// knobs is how the baseline proxies are configured in a scenario; the
// resilient setup has its own Caddyfile block in the scenario instead.
type knobs struct {
	// Retry makes the baselines retry: Caddy lb_retries 2 + lb_retry_match,
	// nginx proxy_next_upstream_tries 3, HAProxy retries 2: three tries
	// in all, as the resilient default.
	Retry bool
	// RetryStatus are the statuses the baselines retry. Default: 503.
	RetryStatus []int
	// Read is the baselines' wait for response headers. Default: 10s.
	Read time.Duration
	// MaxConns caps connections to the upstream (0: none).
	MaxConns int
	// Queue is how long HAProxy queues a request for a connection slot
	// when MaxConns is set (nginx has no queue; Caddy waits forever).
	Queue time.Duration
	// Cache, when set, gives nginx a proxy_cache that keeps 200s this
	// long and serves them stale when the upstream fails (S13).
	Cache time.Duration
}

func (k knobs) read() time.Duration {
	if k.Read > 0 {
		return k.Read
	}
	return 10 * time.Second
}

func (k knobs) statuses() []int {
	if len(k.RetryStatus) == 0 {
		return []int{503}
	}
	return k.RetryStatus
}

// proxy is one running proxy process.
type proxy struct {
	setup string
	addr  string // where clients send requests
	admin string // Caddy's admin endpoint, "" for nginx and HAProxy
	dir   string
	log   string
	cmd   *exec.Cmd
}

// env is what every run needs: binaries, the work directory, children.
type env struct {
	root     string // repository root
	work     string
	caddy    string
	nginx    string // "" when not installed
	haproxy  string // "" when not installed
	redis    string // redis-server, "" when not installed
	children *children
	keep     bool   // keep the work directory, with each run's samples
	seed     uint64 // of the first repetition's fault draws
	python   string // the Python with httpx and Tenacity S12's clients run on
}

// backends are what a proxy forwards to.
type backends struct {
	upstream string // the harness's upstream, or S8's chaos quota
	quota    string // S9: the chaos quota, beside the harness's (dead) upstream
	redis    string // S9 fleet: the fleet's Redis URL
}

// startProxies starts the proxy of setup: one process, or the
// scenario's gateways (and, for the fleet, their Redis). stop ends them
// all; it may be called more than once.
func (e *env) startProxies(ctx context.Context, setup string, sc *scenario, bk backends, dir string) ([]*proxy, func(), error) {
	if sc.Gateways == 0 {
		p, err := e.startProxy(ctx, setup, sc, bk, dir)
		if err != nil {
			return nil, nil, err
		}
		return []*proxy{p}, func() { e.children.kill(p.cmd) }, nil
	}
	return e.startGateways(ctx, setup, sc, bk, dir)
}

// startProxy starts setup in front of bk with sc's configuration and
// waits until a request goes through it.
func (e *env) startProxy(ctx context.Context, setup string, sc *scenario, bk backends, dir string) (*proxy, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &proxy{setup: setup, addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir, log: filepath.Join(dir, "proxy.log")}
	var cmd *exec.Cmd
	switch {
	case isCaddy(setup):
		adminPort, err := freePort()
		if err != nil {
			return nil, err
		}
		p.admin = "127.0.0.1:" + strconv.Itoa(adminPort)
		cfg := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(cfg, []byte(caddyConfig(setup, sc, p.addr, p.admin, bk)), 0o644); err != nil {
			return nil, err
		}
		cmd = exec.Command(e.caddy, "run", "--config", cfg, "--adapter", "caddyfile")
		cmd.Env = e.caddyEnv()
	case setup == setupNginx:
		if e.nginx == "" {
			return nil, errSkipped
		}
		if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
			return nil, err
		}
		cfg := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(cfg, []byte(nginxConf(sc, p.addr, bk.upstream, dir)), 0o644); err != nil {
			return nil, err
		}
		cmd = exec.Command(e.nginx, "-p", dir, "-c", cfg, "-e", filepath.Join(dir, "error.log"))
	case setup == setupHAProxy:
		if e.haproxy == "" {
			return nil, errSkipped
		}
		cfg := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(cfg, []byte(haproxyConf(sc, p.addr, bk.upstream)), 0o644); err != nil {
			return nil, err
		}
		cmd = exec.Command(e.haproxy, "-db", "-f", cfg)
	default:
		return nil, fmt.Errorf("unknown setup %q", setup)
	}
	logf, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	exited, err := e.children.start(cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", setup, err)
	}
	p.cmd = cmd
	if err := p.waitReady(ctx, exited); err != nil {
		e.children.kill(cmd)
		return nil, err
	}
	return p, nil
}

var errSkipped = errors.New("not installed")

// waitReady waits until a GET through the proxy gets a 200.
func (p *proxy) waitReady(ctx context.Context, exited <-chan struct{}) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("%s exited at start: %s", p.setup, tail(p.log))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if conn, err := net.DialTimeout("tcp", p.addr, 200*time.Millisecond); err == nil {
			conn.Close()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/ready", nil)
			req.Header.Set("X-Bench-Id", "ready")
			if res, err := c.Do(req); err == nil {
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after 15s: %s", p.setup, tail(p.log))
}

// tail returns the end of a log file, for error messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	b = bytes.TrimSpace(b)
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return string(b)
}

// caddySite starts the config of a Caddy setup: the global options
// and the site's first lines, for the admin endpoint and the listener.
const caddySite = `{
	admin %s
	persist_config off
	auto_https off
	grace_period 100ms
}

http://%s {
	bind 127.0.0.1
`

// caddyConfig is the whole Caddyfile of a Caddy setup in sc.
func caddyConfig(setup string, sc *scenario, listen, admin string, bk backends) string {
	if sc.OneExec {
		return oneExecCaddyfile(listen, admin, bk, oneexec.StartLimits)
	}
	if sc.example != nil {
		return sc.example.config(listen, admin, bk.upstream)
	}
	if sc.Gateways > 0 {
		return gatewayCaddyfile(setup, sc, listen, admin, bk)
	}
	return caddyfile(setup, sc, listen, admin, bk.upstream)
}

// caddyfile is the whole config of a Caddy setup.
func caddyfile(setup string, sc *scenario, listen, admin, upstream string) string {
	var b strings.Builder
	fmt.Fprintf(&b, caddySite, admin, listen)
	b.WriteString(reverseProxy(setup, sc, upstream, "\t"))
	if sc.Diag && setup != setupCaddyHTTP {
		b.WriteString(diagErrors)
	}
	b.WriteString("}\n")
	return b.String()
}

// reverseProxy is the reverse_proxy directive of a Caddy setup, at indent.
func reverseProxy(setup string, sc *scenario, upstream, indent string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%sreverse_proxy %s {\n", indent, upstream)
	in := indent + "\t"
	k := sc.Knobs
	switch {
	case setup == setupCaddyHTTP:
		if k.Retry {
			codes := make([]string, 0, len(k.statuses()))
			for _, s := range k.statuses() {
				codes = append(codes, strconv.Itoa(s))
			}
			fmt.Fprintf(&b, "%[1]slb_retries 2\n%[1]slb_try_interval 25ms\n"+
				"%[1]slb_retry_match {\n%[1]s\texpression `{rp.status_code} in [%[2]s]`\n%[1]s}\n"+
				"%[1]slb_retry_match {\n%[1]s\texpression `{rp.is_transport_error} == true`\n%[1]s}\n",
				in, strings.Join(codes, ", "))
		}
		fmt.Fprintf(&b, "%[1]stransport http {\n%[1]s\tdial_timeout 1s\n%[1]s\tresponse_header_timeout %[2]s\n", in, k.read())
		if k.MaxConns > 0 {
			fmt.Fprintf(&b, "%s\tmax_conns_per_host %d\n", in, k.MaxConns)
		}
		b.WriteString(in + "}\n")
	case isResilient(setup):
		writeResilient(&b, in, sc.block(setup), sc.Diag)
	}
	b.WriteString(indent + "}\n")
	return b.String()
}

// writeResilient writes `transport resilient { block }` at indent, and
// with diag the response headers that report the outcome.
func writeResilient(b *strings.Builder, indent, block string, diag bool) {
	b.WriteString(indent + "transport resilient {\n")
	depth := 1 // the block's own lines carry no indentation: nest them by their braces
	for line := range strings.SplitSeq(strings.TrimSpace(block), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			if strings.HasPrefix(line, "}") {
				depth = max(1, depth-1)
			}
			b.WriteString(indent + strings.Repeat("\t", depth) + line + "\n")
			if strings.HasSuffix(line, "{") {
				depth++
			}
		}
	}
	b.WriteString(indent + "}\n")
	if diag {
		b.WriteString(indent + "header_down X-Resilient-Outcome {http.resilient.outcome}\n")
		b.WriteString(indent + "header_down X-Resilient-Attempts {http.resilient.attempts}\n")
	}
}

// diagErrors reports the outcome of errors in response headers.
const diagErrors = `	handle_errors {
		header X-Resilient-Outcome {http.resilient.outcome}
		header X-Resilient-Attempts {http.resilient.attempts}
		respond "{http.resilient.outcome}" {err.status_code}
	}
`

// nginxConf lists the upstream once per try: nginx never retries the
// server it just tried, so a one-server upstream could not retry at
// all. max_fails=0 keeps nginx from marking it down (with max_fails, a
// 10% flaky upstream is taken out of rotation). The zone makes
// max_conns global rather than per worker.
func nginxConf(sc *scenario, listen, upstream, dir string) string {
	k := sc.Knobs
	tries := 1
	if k.Retry {
		tries = 3
	}
	server := "\t\tserver " + upstream + " max_fails=0"
	if k.MaxConns > 0 {
		server += " max_conns=" + strconv.Itoa(k.MaxConns)
	}
	servers := strings.Repeat(server+";\n", tries)
	next := "off"
	if k.Retry {
		next = "error timeout non_idempotent"
		for _, s := range k.statuses() {
			next += " http_" + strconv.Itoa(s)
		}
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;\n"
	}
	tmp := filepath.Join(dir, "tmp")
	cachePath, cache := "", ""
	if k.Cache > 0 {
		cachePath, cache = nginxCache(tmp, k.Cache)
	}
	return fmt.Sprintf(`%sdaemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 16384;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 8192; }
http {
	access_log off;
	client_body_temp_path %[3]s/body;
	proxy_temp_path %[3]s/proxy;
	fastcgi_temp_path %[3]s/fastcgi;
	uwsgi_temp_path %[3]s/uwsgi;
	scgi_temp_path %[3]s/scgi;
%[9]s	upstream backend {
		zone backend 64k;
%[4]s		keepalive 64;
	}
	server {
		listen %[5]s;
		location / {
			proxy_pass http://backend;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_next_upstream %[6]s;
			proxy_next_upstream_tries %[7]d;
			proxy_connect_timeout 1s;
			proxy_send_timeout 10s;
			proxy_read_timeout %[8]dms;
%[10]s		}
	}
}
`, user, dir, tmp, servers, listen, next, tries, k.read().Milliseconds(), cachePath, cache)
}

// nginxCache is the cache of nginx's S13 setup, for the http block and
// the location: the answers of each target and caller (Authorization is
// in the key, so that no caller gets another's) kept for valid (nginx
// counts it in whole seconds), then fetched again; when the upstream
// fails (connect error, timeout, 5xx) the kept one is served, however
// old. X-Cache-Status tells the client which it got.
func nginxCache(tmp string, valid time.Duration) (httpBlock, location string) {
	httpBlock = fmt.Sprintf("\tproxy_cache_path %s/cache levels=1:2 keys_zone=reads:16m max_size=256m inactive=1h use_temp_path=off;\n", tmp)
	location = fmt.Sprintf("\t\t\tproxy_cache reads;\n"+
		"\t\t\tproxy_cache_key \"$scheme$proxy_host$request_uri $http_authorization\";\n"+
		"\t\t\tproxy_cache_valid 200 %ds;\n"+
		"\t\t\tproxy_cache_use_stale error timeout http_500 http_502 http_503 http_504;\n"+
		"\t\t\tadd_header X-Cache-Status $upstream_cache_status always;\n", max(1, int(valid/time.Second)))
	return httpBlock, location
}

// haproxyConf retries on the same server (no redispatch). HAProxy 2.6
// cannot retry on 429: retry-on has no such keyword there.
func haproxyConf(sc *scenario, listen, upstream string) string {
	k := sc.Knobs
	retries, retryOn := 0, "none"
	if k.Retry {
		retries, retryOn = 2, "conn-failure empty-response response-timeout"
		for _, s := range k.statuses() {
			if s != 429 {
				retryOn += " " + strconv.Itoa(s)
			}
		}
	}
	server := "server s1 " + upstream
	if k.MaxConns > 0 {
		server += " maxconn " + strconv.Itoa(k.MaxConns)
	}
	queue := 10 * time.Second
	if k.Queue > 0 {
		queue = k.Queue
	}
	return fmt.Sprintf(`global
	nbthread 2
	maxconn 8000
defaults
	mode http
	timeout connect 1s
	timeout client 30s
	timeout server %dms
	timeout queue %dms
	timeout http-keep-alive 30s
	retries %d
	retry-on %s
frontend fe
	bind %s
	default_backend be
backend be
	%s
`, k.read().Milliseconds(), queue.Milliseconds(), retries, retryOn, listen, server)
}
