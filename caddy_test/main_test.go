// Package integration runs real Caddy (caddytest) against real upstream
// servers on loopback. caddytest uses fixed ports (admin 2999, HTTP
// 9080, HTTPS 9443), so every test that loads a config lives in this one
// package and none runs in parallel.
package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/caddy-resilient/resilient"
	_ "github.com/caddy-resilient/resilient/chaos"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func TestMain(m *testing.M) {
	// keep Caddy's storage and autosaved config out of the user's home
	dir, err := os.MkdirTemp("", "resilient-caddytest-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// workDir holds Caddy's storage and the log files of the tests.
var workDir string

// loads numbers config loads, so each gets a log file of its own.
var loads atomic.Int64

// gateway is a loaded Caddy config plus the log file of the transport.
type gateway struct {
	*caddytest.Tester
	t       *testing.T
	logPath string
}

// globals is the global options block every test config starts with:
// %[1]s is the transport's log file, %[2]s the work directory, %[3]s
// more options.
const globals = `{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	persist_config off
	%[3]s
	storage file_system %[2]s/data
	log default {
		output file %[2]s/caddy.log
		exclude http.reverse_proxy.transport.resilient
	}
	log resilient {
		output file %[1]s
		format json
		level DEBUG
		include http.reverse_proxy.transport.resilient
	}
}
`

// loadGateway loads sites (Caddyfile site blocks) into the in-process
// Caddy, with the transport's log going to a fresh file.
func loadGateway(t *testing.T, sites string) *gateway {
	t.Helper()
	return loadGatewayWith(t, "", sites)
}

// loadGatewayWith is loadGateway with more global options.
func loadGatewayWith(t *testing.T, options, sites string) *gateway {
	t.Helper()
	logPath := filepath.Join(workDir, fmt.Sprintf("%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"), loads.Add(1)))
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		TestRequestTimeout: 10 * time.Second,
		LoadRequestTimeout: 10 * time.Second,
	})
	id := loads.Load()
	tester.InitServer(fmt.Sprintf(globals, logPath, workDir, options)+sites+fmt.Sprintf(loadCheckSite, id), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	waitForLoad(t, id)
	return &gateway{Tester: tester, t: t, logPath: logPath}
}

// loadCheckSite answers with the number of the config load that holds
// it, after a word: `respond` takes a lone three-digit number for a status.
const loadCheckSite = `
http://loadcheck.test:9080 {
	respond "load %d"
}
`

// waitForLoad waits until fresh connections to :9080 reach the config
// numbered id. A reload starts the new servers before it stops the old
// ones, and both listen with SO_REUSEPORT: until the old server's
// listener is closed, the kernel may hand it a new connection, which the
// old server then drops unanswered.
func waitForLoad(t *testing.T, id int64) {
	t.Helper()
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	want := fmt.Sprint("load ", id)
	deadline := time.Now().Add(5 * time.Second)
	for streak := 0; streak < 10; {
		if time.Now().After(deadline) {
			t.Fatalf("config %d never answered on :9080", id)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:9080/", nil)
		req.Host = "loadcheck.test"
		res, err := client.Do(req)
		if err != nil {
			streak = 0
			time.Sleep(time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(b) == want {
			streak++
		} else {
			streak = 0
		}
	}
}

// proxySite is a site on :9080 that proxies to upstream with the given
// reverse_proxy options and reports outcomes in response headers, both
// for upstream answers and for errors.
func proxySite(upstream, options string) string {
	return fmt.Sprintf(`
http://localhost:9080 {
	reverse_proxy %s {
		%s
		header_down X-Outcome {http.resilient.outcome}
		header_down X-Attempts {http.resilient.attempts}
	}
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		header X-Attempts {http.resilient.attempts}
		header X-Retry-After {http.resilient.retry_after}
		header X-Breaker {http.resilient.breaker}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`, upstream, options)
}

// do sends req to the gateway and returns the response with its body read.
func (g *gateway) do(req *http.Request) (*http.Response, string) {
	g.t.Helper()
	res, err := g.Client.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	var b strings.Builder
	_, err = bufio.NewReader(res.Body).WriteTo(&b)
	if err != nil {
		g.t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return res, b.String()
}

// get is do for a GET of path on :9080.
func (g *gateway) get(path string) (*http.Response, string) {
	g.t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://localhost:9080"+path, nil)
	if err != nil {
		g.t.Fatal(err)
	}
	return g.do(req)
}

// expect checks status and X-Outcome of a response.
func expect(t *testing.T, res *http.Response, status int, outcome string) {
	t.Helper()
	if res.StatusCode != status || res.Header.Get("X-Outcome") != outcome {
		t.Fatalf("got status %d outcome %q, want %d %q", res.StatusCode, res.Header.Get("X-Outcome"), status, outcome)
	}
}

// logEntry is one request entry of the transport's log.
type logEntry struct {
	Level      string  `json:"level"`
	Msg        string  `json:"msg"`
	Suppressed *uint64 `json:"suppressed"`
	Upstream   string  `json:"upstream"`
	Method     string  `json:"method"`
	Path       string  `json:"path"`
	Outcome    string  `json:"outcome"`
	Status     int     `json:"status"`
	Attempts   int     `json:"attempts"`
	Duration   float64 `json:"duration"`
	Idempotent string  `json:"idempotent"`
	Breaker    string  `json:"breaker"`
	Denied     string  `json:"retry_denied"`
	Tries      []struct {
		Outcome  string  `json:"outcome"`
		Status   int     `json:"status"`
		Duration float64 `json:"duration"`
		Wait     float64 `json:"wait"`
		Hedge    bool    `json:"hedge"`
	} `json:"tries"`
	raw string
}

// entries returns the request entries logged so far; it waits up to
// two seconds for at least min of them, since an entry is written when
// the response body is closed.
func (g *gateway) entries(min int) []logEntry {
	g.t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		var out []logEntry
		data, _ := os.ReadFile(g.logPath)
		for _, line := range strings.Split(string(data), "\n") {
			var e logEntry
			if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "request" {
				e.raw = line
				out = append(out, e)
			}
		}
		if len(out) >= min || time.Now().After(deadline) {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastEntry returns the latest request entry, failing the test if none.
func (g *gateway) lastEntry() logEntry {
	g.t.Helper()
	es := g.entries(1)
	if len(es) == 0 {
		g.t.Fatal("no request entry in the transport's log")
	}
	return es[len(es)-1]
}

// upstream is a loopback HTTP server that counts the requests it gets.
type upstream struct {
	*http.Server
	addr  string
	count atomic.Int64
}

// startUpstream serves h on a fresh loopback port until the test ends.
func startUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	ln := freshLoopback(t)
	u := &upstream{addr: ln.Addr().String()}
	u.Server = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.count.Add(1)
		h(w, r)
	})}
	go u.Serve(ln)
	t.Cleanup(func() { u.Close() })
	return u
}

// closedPort returns a loopback address nothing listens on, so
// connecting to it is refused.
func closedPort(t *testing.T) string {
	t.Helper()
	ln := freshLoopback(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentListener accepts connections and never writes a byte; it counts
// the connections it accepted and what it read.
type silentListener struct {
	net.Listener
	conns atomic.Int64
	read  atomic.Int64
}

// startSilent starts a silentListener; with readBody false it also
// never reads, so a writer fills the socket buffers and blocks.
func startSilent(t *testing.T, read bool) *silentListener {
	t.Helper()
	ln := freshLoopback(t)
	s := &silentListener{Listener: ln}
	done := make(chan struct{})
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			conns = append(conns, c)
			if tc, ok := c.(*net.TCPConn); ok && !read {
				tc.SetReadBuffer(4096)
			}
			if read {
				go func() {
					buf := make([]byte, 32<<10)
					for {
						n, err := c.Read(buf)
						s.read.Add(int64(n))
						if err != nil {
							return
						}
						select {
						case <-done:
							return
						default:
						}
					}
				}()
			}
		}
	}()
	t.Cleanup(func() { close(done); ln.Close() })
	return s
}

// usedPorts are the loopback ports this test process has listened on.
// Caddy's metrics live as long as the process, labelled by upstream
// address: a test that reused an earlier test's port would read the
// earlier test's counts as its own.
var usedPorts = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// freshLoopback listens on a loopback port no earlier test of this
// process listened on.
func freshLoopback(t *testing.T) net.Listener {
	t.Helper()
	var stale []net.Listener
	defer func() {
		for _, l := range stale {
			l.Close()
		}
	}()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		usedPorts.Lock()
		seen := usedPorts.m[addr]
		usedPorts.m[addr] = true
		usedPorts.Unlock()
		if !seen {
			return ln
		}
		stale = append(stale, ln) // held open so that the next try gets another port
	}
	t.Fatal("no loopback port this process has not used before")
	return nil
}
