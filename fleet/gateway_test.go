//go:build linux

package fleet_test

// End-to-end tests of fleet mode: several real Caddy processes of this
// repository's build, each with its own admin and HTTP port, in front of
// upstreams served by this test process, sharing a real redis-server
// that the tests start, kill and restart themselves. Every process is
// started in a process group of its own and killed by it when its test
// ends; all traffic is on 127.0.0.1.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	// Not used here: linked in so that go test's cache, which cannot see
	// what the Caddy binary is built from, sees changes to it.
	_ "github.com/caddy-resilient/resilient"
	_ "github.com/caddy-resilient/resilient/chaos"
	"github.com/caddy-resilient/resilient/internal/redistest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if caddyBuild.dir != "" {
		os.RemoveAll(caddyBuild.dir)
	}
	os.Exit(code)
}

// caddyBuild is this repository's Caddy, built once for the whole test
// binary, and only if a test needs it.
var caddyBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// caddyBinary returns the Caddy to run: $RESILIENT_CADDY (CI builds it
// once for every package), else ./cmd/caddy built into a temporary
// directory.
func caddyBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("RESILIENT_CADDY"); p != "" {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			t.Fatalf("RESILIENT_CADDY=%s is not an executable", p)
		}
		return p
	}
	b := &caddyBuild
	b.once.Do(func() {
		root, err := filepath.Abs("..")
		if err != nil {
			b.err = err
			return
		}
		if b.dir, b.err = os.MkdirTemp("", "resilient-fleet-caddy-"); b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "caddy")
		cmd := exec.Command("go", "build", "-o", b.path, "./cmd/caddy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// freePorts returns n distinct free loopback ports (see
// redistest.FreePorts).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	return redistest.FreePorts(t, n)
}

// startProcess starts cmd in a process group of its own, with its output
// in the file at logPath, and kills the group when t ends. It returns a
// function that kills it earlier (and is harmless to call again).
func startProcess(t *testing.T, cmd *exec.Cmd, logPath string) (kill func()) {
	t.Helper()
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// the kernel kills it should this test binary die without cleaning
	// up (a go test -timeout, say)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			out.Close()
		})
	}
	t.Cleanup(kill)
	return kill
}

// redisServer is a real redis-server on a loopback port, with a password
// and no persistence, that a test can kill and start again on the same
// port (as fleet/redis_test.go's, which package fleet_test cannot see).
type redisServer struct {
	t        *testing.T
	bin      string
	port     int
	password string
	dir      string
	extra    []string // appended to its command line
	starts   int
	kill     func()
}

// startRedis starts a redis-server for t, with extra arguments after
// the harness's own (a later option wins: "--appendonly", "yes" keeps
// what it acknowledged across a kill). The tests need the real thing:
// without it they fail.
func startRedis(t *testing.T, extra ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not on PATH: install Debian's redis-server package (apt-get install -y redis-server); the fleet tests run against a real Redis")
	}
	var pw [12]byte
	_, _ = rand.Read(pw[:])
	s := &redisServer{t: t, bin: bin, port: freePorts(t, 1)[0], password: "pw-" + hex.EncodeToString(pw[:]), dir: t.TempDir(), extra: extra}
	s.start()
	return s
}

// start runs redis-server and waits until it answers.
func (s *redisServer) start() {
	s.t.Helper()
	s.starts++
	args := append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--requirepass", s.password, "--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--loglevel", "warning"}, s.extra...)
	cmd := exec.Command(s.bin, args...)
	logPath := filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", s.starts))
	s.kill = startProcess(s.t, cmd, logPath)
	rdb := s.client()
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			s.t.Fatalf("redis-server on port %d did not answer within 10s:\n%s", s.port, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// url is the fleet's Redis URL, password included.
func (s *redisServer) url() string {
	return fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", s.password, s.port)
}

func (s *redisServer) client() *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr: fmt.Sprintf("127.0.0.1:%d", s.port), Password: s.password,
		DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1,
	})
}

// subscribers returns how many subscribers the fleet under prefix has on
// both of its channels (fleet/keys.go names them), the fewer of the two.
func (s *redisServer) subscribers(prefix string) int64 {
	rdb := s.client()
	defer rdb.Close()
	b, o := prefix+":events:breaker", prefix+":events:override"
	n, err := rdb.PubSubNumSub(context.Background(), b, o).Result()
	if err != nil {
		return -1
	}
	return min(n[b], n[o])
}

// upstream is an HTTP server in this process that answers with a
// status (which a test may change) and counts the requests that reach
// it, by the gateway that sent them (the X-Gateway header the configs
// set).
type upstream struct {
	*httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	by     map[string]int
}

func newUpstream(t *testing.T, status int) *upstream {
	u := &upstream{by: map[string]int{}}
	u.status.Store(int32(status))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.by[r.Header.Get("X-Gateway")]++
		u.mu.Unlock()
		w.WriteHeader(int(u.status.Load()))
	}))
	t.Cleanup(u.Close)
	return u
}

// addr is the upstream's dial address, as the breakers name it.
func (u *upstream) addr() string { return u.Listener.Addr().String() }

// count returns the requests from the gateway named gw ("": from all).
func (u *upstream) count(gw string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if gw != "" {
		return u.by[gw]
	}
	n := 0
	for _, v := range u.by {
		n += v
	}
	return n
}

// gateway is one Caddy process.
type gateway struct {
	t       *testing.T
	name    string
	admin   string // host:port of the admin endpoint
	http    string // host:port of the site
	conf    string // its Caddyfile
	logPath string
	fl      *gatewayFleet
}

// gatewayFleet is the Caddy processes of one test, and what they must
// never show: the Redis password.
type gatewayFleet struct {
	t      *testing.T
	redis  *redisServer // nil for a control run without the fleet
	prefix string
	gws    []*gateway
	secret string
}

// routes are the handle blocks of a site: %[1]s stands for the fleet
// block (empty for a control run without the fleet).
type routes string

// caddyfile is one instance's config: its admin and site ports, the
// logs on stdout/stderr (the transport's at debug), a /ready route, the
// routes and a handle_errors block that reports the outcome in
// X-Outcome, as caddy_test's proxySite does (and what the caller may
// assume, and the key's verdict, in X-Executed and X-Idem).
const caddyfile = `{
	admin 127.0.0.1:%[1]d
	persist_config off
	auto_https off
	default_bind 127.0.0.1
	log default {
		output stderr
		format json
		level INFO
		exclude http.reverse_proxy.transport.resilient
	}
	log resilient {
		output stdout
		format json
		level DEBUG
		include http.reverse_proxy.transport.resilient
	}
}

http://127.0.0.1:%[2]d {
	handle /ready {
		respond "ready"
	}
%[3]s
	handle_errors {
		header X-Outcome {http.resilient.outcome}
		header X-Executed {http.resilient.executed}
		header X-Idem {http.resilient.idempotency}
		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`

// proxyRoute is a handle block for path that proxies to addr with the
// given transport options; %[1]s in them stands for the fleet block.
func proxyRoute(path, addr, options string) string {
	return fmt.Sprintf(`	handle %s {
		reverse_proxy %s {
			transport resilient {
%s
				%%[1]s
			}
			header_up X-Gateway {env.GATEWAY}
			header_down X-Outcome {http.resilient.outcome}
		}
	}
`, path, addr, options)
}

// startFleet starts n Caddy processes, named a, b, c…, serving rs; with
// redis not nil they form one fleet under a prefix of the test's own. It
// returns once every instance serves and, in a fleet, every one is
// connected to Redis and subscribed.
func startFleet(t *testing.T, n int, rdb *redisServer, rs routes) *gatewayFleet {
	t.Helper()
	bin := caddyBinary(t)
	fl := &gatewayFleet{t: t, redis: rdb, prefix: "gw-" + strings.ReplaceAll(t.Name(), "/", "-")}
	fleetBlock := ""
	if rdb != nil {
		fl.secret = rdb.password
		fleetBlock = fmt.Sprintf("fleet {\n\t\t\t\t\tredis %s\n\t\t\t\t\tprefix %s\n\t\t\t\t\ttimeout 50ms\n\t\t\t\t}", rdb.url(), fl.prefix)
	}
	// registered first, so it runs last: once every process is dead and
	// its log complete
	t.Cleanup(fl.checkLogs)
	dir := t.TempDir()
	ports := freePorts(t, 2*n)
	for i := range n {
		g := &gateway{t: t, fl: fl, name: string(rune('a' + i)),
			admin: fmt.Sprintf("127.0.0.1:%d", ports[2*i]), http: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])}
		conf := filepath.Join(dir, g.name+".Caddyfile")
		body := fmt.Sprintf(caddyfile, ports[2*i], ports[2*i+1], fmt.Sprintf(string(rs), fleetBlock))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "run", "--config", conf, "--adapter", "caddyfile")
		cmd.Env = append(os.Environ(), "GATEWAY="+g.name,
			"XDG_CONFIG_HOME="+filepath.Join(dir, g.name, "config"),
			"XDG_DATA_HOME="+filepath.Join(dir, g.name, "data"))
		g.conf = conf
		g.logPath = filepath.Join(dir, g.name+".log")
		startProcess(t, cmd, g.logPath)
		fl.gws = append(fl.gws, g)
	}
	for _, g := range fl.gws {
		g.waitReady()
	}
	// registered last, so it runs first, while they all run
	t.Cleanup(fl.checkAdmin)
	if rdb != nil {
		fl.waitJoined(10 * time.Second)
	}
	return fl
}

// waitReady waits until the instance serves its site.
func (g *gateway) waitReady() {
	g.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if a := g.get("/ready"); a.err == nil && a.status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(g.logPath)
			g.t.Fatalf("gateway %s did not serve on %s within 15s; its log:\n%s", g.name, g.http, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitJoined waits until every instance reports itself connected to
// Redis in its metrics and is subscribed to the fleet's channels.
func (fl *gatewayFleet) waitJoined(d time.Duration) time.Duration {
	fl.t.Helper()
	start := time.Now()
	for {
		ok := fl.redis.subscribers(fl.prefix) == int64(len(fl.gws))
		for _, g := range fl.gws {
			ok = ok && g.fleetConnected()
		}
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > d {
			fl.t.Fatalf("the instances did not all connect to Redis and subscribe within %s (subscribers: %d)", d, fl.redis.subscribers(fl.prefix))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric returns the value of the first sample on the instance's
// /metrics whose name and labels start with series, and whether there is
// one.
func (g *gateway) metric(series string) (float64, bool) {
	_, body := g.adminDo(http.MethodGet, "/metrics")
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, series) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// fleetConnected reads caddy_resilient_fleet_connected off the instance's
// /metrics.
func (g *gateway) fleetConnected() bool {
	v, ok := g.metric("caddy_resilient_fleet_connected{")
	return ok && v == 1
}

// checkAdmin reads what the instances' admin APIs show of the transport
// and the fleet, for adminDo to check that the password is not in it
// (Caddy's own /config/ shows the config it was given, password
// included, and is left out).
func (fl *gatewayFleet) checkAdmin() {
	for _, g := range fl.gws {
		for _, path := range []string{"/resilient/breakers", "/metrics", "/reverse_proxy/upstreams"} {
			if status, body := g.adminDo(http.MethodGet, path); status != http.StatusOK {
				fl.t.Errorf("GET %s on %s: %d %s", path, g.name, status, body)
			}
		}
	}
}

// checkLogs fails the test if one of the instances' logs holds the Redis
// password. It runs in a cleanup once every process is dead. (Admin
// answers are checked as they come, see adminDo.)
func (fl *gatewayFleet) checkLogs() {
	if fl.secret == "" {
		return
	}
	for _, g := range fl.gws {
		b, err := os.ReadFile(g.logPath)
		if err != nil {
			fl.t.Errorf("reading %s's log: %v", g.name, err)
			continue
		}
		if len(b) == 0 {
			fl.t.Errorf("%s's log is empty: the secrets check would prove nothing", g.name)
		}
		for line := range strings.Lines(string(b)) {
			if strings.Contains(line, fl.secret) {
				fl.t.Errorf("the Redis password is in %s's log: %s", g.name, line)
			}
		}
	}
}

var client = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
	Timeout:   10 * time.Second,
}

// answer is a gateway's answer to a proxied request.
type answer struct {
	status  int
	outcome string
	took    time.Duration
	err     error
}

// get sends GET path to the instance's site.
func (g *gateway) get(path string) answer {
	start := time.Now()
	res, err := client.Get("http://" + g.http + path)
	if err != nil {
		return answer{err: err, took: time.Since(start)}
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return answer{status: res.StatusCode, outcome: res.Header.Get("X-Outcome"), took: time.Since(start)}
}

// mustGet is get, failing the test on a transport error.
func (g *gateway) mustGet(path string) answer {
	g.t.Helper()
	a := g.get(path)
	if a.err != nil {
		g.t.Fatalf("GET %s on %s: %v", path, g.name, a.err)
	}
	return a
}

// adminDo sends a request to the instance's admin API and returns the
// status and body, failing the test if the body holds the password.
func (g *gateway) adminDo(method, path string) (int, string) {
	g.t.Helper()
	req, err := http.NewRequest(method, "http://"+g.admin+path, nil)
	if err != nil {
		g.t.Fatal(err)
	}
	res, err := client.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s on %s's admin API: %v", method, path, g.name, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if s := g.fl.secret; s != "" && strings.Contains(string(b), s) {
		g.t.Errorf("the Redis password is in %s's answer to %s %s: %s", g.name, method, path, b)
	}
	return res.StatusCode, string(b)
}

// breakerView is an entry of GET /resilient/breakers, the fields the
// tests read.
type breakerView struct {
	Upstream string `json:"upstream"`
	State    string `json:"state"`
	Override *struct {
		State string `json:"state"`
		From  string `json:"from"`
	} `json:"override"`
	OpenPeriod string `json:"open_period"`
	Fleet      *struct {
		State      string    `json:"state"`
		Until      time.Time `json:"until"`
		Origin     string    `json:"origin"`
		OpenPeriod string    `json:"open_period"`
	} `json:"fleet"`
}

// breaker returns the instance's view of upstream's breaker, nil if it
// has none.
func (g *gateway) breaker(addr string) *breakerView {
	g.t.Helper()
	status, body := g.adminDo(http.MethodGet, "/resilient/breakers")
	if status != http.StatusOK {
		g.t.Fatalf("GET /resilient/breakers on %s: %d %s", g.name, status, body)
	}
	var all []breakerView
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		g.t.Fatalf("GET /resilient/breakers on %s: %v: %s", g.name, err, body)
	}
	for _, b := range all {
		if b.Upstream == addr {
			return &b
		}
	}
	return nil
}

// instanceID reads the instance's fleet id off its "fleet: joined" log
// entry.
func (g *gateway) instanceID() string {
	g.t.Helper()
	f, err := os.Open(g.logPath)
	if err != nil {
		g.t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e struct {
			Msg      string `json:"msg"`
			Instance string `json:"instance"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "fleet: joined" && e.Instance != "" {
			return e.Instance
		}
	}
	g.t.Fatalf("%s logged no \"fleet: joined\" entry", g.name)
	return ""
}

// poll calls cond every few milliseconds until it holds, and returns how
// long that took; it fails the test after d.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// breakerFor is the transport block of the breaker tests: no retries,
// three failures in a row trip it, for openFor.
func breakerFor(openFor time.Duration) string {
	return fmt.Sprintf(`				retry off
				breaker {
					consecutive_failures 3
					open_for %s
				}`, openFor)
}

// deadBreaker trips for long enough to outlast a test.
var deadBreaker = breakerFor(10 * time.Second)

// tripAndSpread trips the breaker of dead (always 503) on tripper, and
// checks that warm (which sent it one request before, so that it has a
// breaker to watch through the admin API) and cold (which never sent it
// anything) refuse it within 1 s, without sending it anything more. It
// returns how long the warm instance took to learn of the trip, as its
// admin API shows it. The breaker opens for openFor.
func tripAndSpread(t *testing.T, dead *upstream, path string, tripper, warm, cold *gateway, openFor time.Duration) time.Duration {
	t.Helper()
	if a := warm.mustGet(path); a.status != http.StatusServiceUnavailable || a.outcome != "upstream_status" {
		t.Fatalf("warm-up on %s: got %d %q, want 503 upstream_status", warm.name, a.status, a.outcome)
	}
	before := map[string]int{warm.name: dead.count(warm.name), cold.name: dead.count(cold.name)}

	var tripped time.Time // when the failure that tripped it came back
	for i := 1; ; i++ {
		a := tripper.mustGet(path)
		if a.outcome == "breaker_open" {
			if a.status != http.StatusServiceUnavailable {
				t.Fatalf("breaker_open on %s with status %d, want 503", tripper.name, a.status)
			}
			if i != 4 {
				t.Fatalf("%s refused after %d failures, want 3", tripper.name, i-1)
			}
			break
		}
		if a.status != http.StatusServiceUnavailable || a.outcome != "upstream_status" {
			t.Fatalf("request %d on %s: got %d %q, want 503 upstream_status", i, tripper.name, a.status, a.outcome)
		}
		if i > 3 {
			t.Fatalf("%s's breaker did not trip after %d failures", tripper.name, i)
		}
		tripped = time.Now()
	}

	// the warm instance's admin API shows the fleet's state without a
	// request being sent
	var view *breakerView
	poll(t, time.Second, warm.name+"'s breaker follows the fleet's open state", func() bool {
		view = warm.breaker(dead.addr())
		return view != nil && view.Fleet != nil
	})
	learned := time.Since(tripped)
	if view.State != "open" || view.Fleet.State != "open" || view.Fleet.Origin != tripper.instanceID() {
		t.Errorf("%s's breaker: state %q, fleet %+v; want open, following %s's open state", warm.name, view.State, *view.Fleet, tripper.instanceID())
	}
	if left := time.Until(view.Fleet.Until); left < openFor*8/10 || left > openFor {
		t.Errorf("%s follows the fleet's open state for %s more, want the rest of open_for (%s)", warm.name, left, openFor)
	}

	for _, g := range []*gateway{warm, cold} {
		a := g.mustGet(path)
		if a.status != http.StatusServiceUnavailable || a.outcome != "breaker_open" {
			t.Errorf("first request to %s after %s tripped: got %d %q, want 503 breaker_open", g.name, tripper.name, a.status, a.outcome)
		}
		if n := dead.count(g.name); n != before[g.name] {
			t.Errorf("the dead upstream got %d requests from %s after %s tripped, want none", n-before[g.name], g.name, tripper.name)
		}
	}
	if view := cold.breaker(dead.addr()); view == nil || view.Fleet == nil || view.Fleet.State != "open" {
		t.Errorf("%s's new breaker does not follow the fleet's open state: %+v", cold.name, view)
	}
	if n := dead.count(tripper.name); n != 3 {
		t.Errorf("the dead upstream got %d requests from %s, want the 3 that tripped it", n, tripper.name)
	}
	return learned
}

// A breaker that trips on one instance turns the others away from the
// upstream within a second, on their first request after it, without
// their sending it anything: the instance that tripped counted the
// failures for the fleet.
func TestGatewayTripSpreads(t *testing.T) {
	rdb := startRedis(t)
	dead := newUpstream(t, http.StatusServiceUnavailable)
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/dead", dead.addr(), deadBreaker)))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	learned := tripAndSpread(t, dead, "/dead", a, b, c, 10*time.Second)
	t.Logf("%s learned of %s's trip %s after its answer", b.name, a.name, learned.Round(time.Millisecond))
}

// hammer sends requests to every instance at once from workers per
// instance, as fast as they answer, for d; it returns the answers by
// outcome and how long it ran.
func hammer(t *testing.T, gws []*gateway, workers int, d time.Duration) (map[string]int, time.Duration) {
	t.Helper()
	var mu sync.Mutex
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for _, g := range gws {
		for range workers {
			wg.Go(func() {
				for time.Now().Before(stop) {
					a := g.get("/")
					key := fmt.Sprintf("%d %s", a.status, a.outcome)
					if a.err != nil {
						key = "error"
					}
					mu.Lock()
					outcomes[key]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	return outcomes, time.Since(start)
}

// The rate limit holds for the fleet as a whole: three instances
// hammered at once send the upstream what one bucket allows, where
// three instances on their own (the control, without the fleet) send
// three times as much.
func TestGatewayRateLimitShared(t *testing.T) {
	const rate, burst = 20, 1
	rl := fmt.Sprintf(`				retry off
				rate_limit {
					rate %d/s
					burst %d
					max_wait 0
				}`, rate, burst)
	run := func(t *testing.T, rdb *redisServer) (int, time.Duration) {
		up := newUpstream(t, http.StatusOK)
		fl := startFleet(t, 3, rdb, routes(proxyRoute("/*", up.addr(), rl)))
		outcomes, took := hammer(t, fl.gws, 3, 2*time.Second)
		for k := range outcomes {
			if k != "200 ok" && k != "429 rate_limited" {
				t.Errorf("answers: %v; want only 200 ok and 429 rate_limited", outcomes)
				break
			}
		}
		n := up.count("")
		t.Logf("%s: the upstream got %d requests in %s (%.1f/s); answers: %v", t.Name(), n, took.Round(time.Millisecond), float64(n)/took.Seconds(), outcomes)
		return n, took
	}

	var shared int
	var took time.Duration
	t.Run("fleet", func(t *testing.T) {
		shared, took = run(t, startRedis(t))
		if limit := int(rate*took.Seconds()) + burst + 3; shared > limit {
			t.Errorf("the upstream got %d requests in %s from the fleet, above the fleet's rate: want at most %d", shared, took, limit)
		}
		if least := int(0.5 * rate * took.Seconds()); shared < least {
			t.Errorf("the upstream got %d requests in %s from the fleet: the fleet's rate is not used (want at least %d)", shared, took, least)
		}
	})
	t.Run("control", func(t *testing.T) {
		alone, took := run(t, nil)
		// each instance has a bucket of its own: three times the rate
		if least := int(2 * rate * took.Seconds()); alone < least {
			t.Errorf("without the fleet the upstream got %d requests in %s, want about three instances' worth (at least %d): the test cannot tell a shared limit from separate ones", alone, took, least)
		}
	})
}

// An operator's override given to one instance holds for the fleet: a
// force_open on an upstream nobody has sent to yet is shown by the
// others as from the fleet and refuses there too; a reset on another
// instance lifts it everywhere.
func TestGatewayOverrideShared(t *testing.T) {
	rdb := startRedis(t)
	up := newUpstream(t, http.StatusOK)
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/*", up.addr(), "")))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]

	if status, body := a.adminDo(http.MethodPost, "/resilient/breakers/force_open?upstream="+up.addr()+"&for=30s"); status != http.StatusOK {
		t.Fatalf("force_open on %s: %d %s", a.name, status, body)
	}
	given := time.Now()
	for _, g := range []*gateway{b, c} {
		poll(t, time.Second, g.name+" shows the override given to "+a.name, func() bool {
			v := g.breaker(up.addr())
			return v != nil && v.Override != nil && v.Override.From == "fleet" && v.Override.State == "open" && v.State == "open"
		})
	}
	t.Logf("the override reached %s and %s %s after it was given to %s", b.name, c.name, time.Since(given).Round(time.Millisecond), a.name)
	for _, g := range fl.gws {
		if r := g.mustGet("/"); r.status != http.StatusServiceUnavailable || r.outcome != "breaker_open" {
			t.Errorf("%s under the fleet's force_open: got %d %q, want 503 breaker_open", g.name, r.status, r.outcome)
		}
	}
	if n := up.count(""); n != 0 {
		t.Errorf("the upstream got %d requests under force_open, want none", n)
	}

	if status, body := c.adminDo(http.MethodPost, "/resilient/breakers/reset?upstream="+up.addr()); status != http.StatusOK {
		t.Fatalf("reset on %s: %d %s", c.name, status, body)
	}
	reset := time.Now()
	for _, g := range []*gateway{a, b} {
		poll(t, time.Second, g.name+" lets requests through after the reset on "+c.name, func() bool {
			r := g.mustGet("/")
			return r.status == http.StatusOK && r.outcome == "ok"
		})
		if v := g.breaker(up.addr()); v == nil || v.Override != nil || v.State != "closed" {
			t.Errorf("%s after the reset on %s: %+v, want a closed breaker without override", g.name, c.name, v)
		}
	}
	t.Logf("the reset reached %s and %s %s after it was given to %s", a.name, b.name, time.Since(reset).Round(time.Millisecond), c.name)
}

// Redis is never in the way: killed under load and started again, it
// costs no request anything, and once the instances are back in the
// fleet a trip spreads as before.
func TestGatewayRedisKilledUnderLoad(t *testing.T) {
	rdb := startRedis(t)
	ok := newUpstream(t, http.StatusOK)
	dead := newUpstream(t, http.StatusServiceUnavailable)
	opts := `				retry off
				breaker {
					consecutive_failures 3
					open_for 10s
				}
				rate_limit {
					rate 1000/s
					burst 100
				}`
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/dead", dead.addr(), opts)+proxyRoute("/*", ok.addr(), opts)))

	const (
		rate     = 50 // requests per second, over all instances
		duration = 6 * time.Second
		slow     = time.Second
	)
	var (
		mu      sync.Mutex
		failed  []string
		slowest time.Duration
		sent    int
		wg      sync.WaitGroup
	)
	start := time.Now()
	tick := time.NewTicker(time.Second / rate)
	killed, restarted := false, false
	for now := range tick.C {
		at := now.Sub(start)
		if at >= duration {
			break
		}
		switch {
		case !killed && at >= 2*time.Second:
			rdb.kill()
			killed = true
			t.Logf("redis-server killed at %s", at.Round(time.Millisecond))
		case killed && !restarted && at >= 4*time.Second:
			rdb.start()
			restarted = true
			t.Logf("redis-server started again at %s", time.Since(start).Round(time.Millisecond))
		}
		g := fl.gws[sent%len(fl.gws)]
		sent++
		wg.Go(func() {
			a := g.get("/")
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, a.took)
			if a.err != nil || a.status != http.StatusOK || a.took > slow {
				failed = append(failed, fmt.Sprintf("%s at %s: %d %q %v in %s", g.name, now.Sub(start).Round(time.Millisecond), a.status, a.outcome, a.err, a.took))
			}
		})
	}
	tick.Stop()
	wg.Wait()
	t.Logf("%d requests over %s, the slowest answered in %s", sent, duration, slowest.Round(time.Millisecond))
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed or took over %s while Redis was killed and restarted:\n%s", len(failed), sent, slow, strings.Join(failed, "\n"))
	}
	if n := ok.count(""); n != sent {
		t.Errorf("the upstream got %d requests, want the %d sent", n, sent)
	}

	back := fl.waitJoined(5 * time.Second)
	t.Logf("every instance was back in the fleet %s after the load ended", back.Round(time.Millisecond))
	for _, g := range fl.gws {
		// the load did run while they were on their own
		if n, _ := g.metric("caddy_resilient_fleet_transitions_total{prefix=\"" + fl.prefix + "\",redis=\"redis://:xxxxx@127.0.0.1:" + strconv.Itoa(rdb.port) + "/0\",to=\"disconnected\"}"); n < 1 {
			t.Errorf("%s never noticed that Redis was gone", g.name)
		}
	}
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	learned := tripAndSpread(t, dead, "/dead", b, a, c, 10*time.Second)
	t.Logf("after the restart, %s learned of %s's trip %s after its answer", a.name, b.name, learned.Round(time.Millisecond))
}

// reload loads the instance's config again through its admin API, as a
// `caddy reload` does, even though it did not change.
func (g *gateway) reload() {
	g.t.Helper()
	conf, err := os.ReadFile(g.conf)
	if err != nil {
		g.t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+g.admin+"/load", strings.NewReader(string(conf)))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate") // load it even though it is the same
	res, err := client.Do(req)
	if err != nil {
		g.t.Fatalf("reloading %s: %v", g.name, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		g.t.Fatalf("reloading %s: %d %s", g.name, res.StatusCode, b)
	}
}

// Half-open and close follow the trip the same way: when the open
// period ends, the others wait for the probes of the instance that
// tripped instead of sending their own, and close when it closes.
func TestGatewayHalfOpenAndCloseFollow(t *testing.T) {
	rdb := startRedis(t)
	up := newUpstream(t, http.StatusServiceUnavailable)
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/*", up.addr(), breakerFor(time.Second))))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	tripAndSpread(t, up, "/", a, b, c, time.Second)

	up.status.Store(http.StatusOK) // the provider is back
	for _, g := range []*gateway{b, c} {
		poll(t, 2*time.Second, g.name+" follows the fleet's breaker into half-open", func() bool {
			v := g.breaker(up.addr())
			return v != nil && v.Fleet != nil && v.Fleet.State == "half_open" && v.State == "half_open"
		})
	}
	sent := up.count(b.name) + up.count(c.name)
	for _, g := range []*gateway{b, c} {
		if r := g.mustGet("/"); r.status != http.StatusServiceUnavailable || r.outcome != "breaker_open" {
			t.Errorf("%s while %s's breaker is half-open: got %d %q, want 503 breaker_open (the probes are %s's)", g.name, a.name, r.status, r.outcome, a.name)
		}
	}
	if n := up.count(b.name) + up.count(c.name) - sent; n != 0 {
		t.Errorf("the upstream got %d requests from %s and %s while %s's breaker was half-open, want none", n, b.name, c.name, a.name)
	}

	for i := range 3 { // half_open_requests successes close it
		if r := a.mustGet("/"); r.status != http.StatusOK || r.outcome != "ok" {
			t.Fatalf("probe %d on %s: got %d %q, want 200 ok", i+1, a.name, r.status, r.outcome)
		}
	}
	closed := time.Now()
	for _, g := range []*gateway{b, c} {
		poll(t, time.Second, g.name+" closes with "+a.name, func() bool {
			r := g.mustGet("/")
			return r.status == http.StatusOK && r.outcome == "ok"
		})
		if v := g.breaker(up.addr()); v == nil || v.State != "closed" || v.Fleet != nil {
			t.Errorf("%s after %s closed: %+v, want a closed breaker following nothing", g.name, a.name, v)
		}
	}
	t.Logf("%s and %s closed %s after %s did", b.name, c.name, time.Since(closed).Round(time.Millisecond), a.name)
}

// A probe that fails on the instance that tripped opens its breaker for
// twice its first period, and the others refuse the upstream for the
// rest of that longer period, not of the first.
func TestGatewayFollowsTheDoubledOpenPeriod(t *testing.T) {
	rdb := startRedis(t)
	dead := newUpstream(t, http.StatusServiceUnavailable)
	opts := `				retry off
				breaker {
					consecutive_failures 3
					open_for 1s 8s
					half_open_requests 1
				}`
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/*", dead.addr(), opts)))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	tripAndSpread(t, dead, "/", a, b, c, time.Second)

	poll(t, 3*time.Second, a.name+"'s breaker half-opens after 1s", func() bool {
		v := a.breaker(dead.addr())
		return v != nil && v.State == "half_open"
	})
	if r := a.mustGet("/"); r.status != http.StatusServiceUnavailable || r.outcome != "upstream_status" {
		t.Fatalf("the probe on %s: got %d %q, want the upstream's 503", a.name, r.status, r.outcome)
	}
	reopened := time.Now()
	if v := a.breaker(dead.addr()); v.State != "open" || v.OpenPeriod != "2s" {
		t.Fatalf("%s after its probe failed: %s for %q, want open for 2s", a.name, v.State, v.OpenPeriod)
	}
	sent := dead.count(b.name) + dead.count(c.name)
	for _, g := range []*gateway{b, c} {
		var view *breakerView
		poll(t, time.Second, g.name+" follows the second, longer open period", func() bool {
			view = g.breaker(dead.addr())
			return view != nil && view.Fleet != nil && view.Fleet.State == "open" && view.Fleet.OpenPeriod == "2s"
		})
		if d := view.Fleet.Until.Sub(reopened.Add(2 * time.Second)); d < -500*time.Millisecond || d > 200*time.Millisecond {
			t.Errorf("%s follows the open state until %s off the end of %s's 2s period", g.name, d, a.name)
		}
		if r := g.mustGet("/"); r.status != http.StatusServiceUnavailable || r.outcome != "breaker_open" {
			t.Errorf("%s during the second open period: got %d %q, want 503 breaker_open", g.name, r.status, r.outcome)
		}
	}
	if n := dead.count(b.name) + dead.count(c.name) - sent; n != 0 {
		t.Errorf("the dead upstream got %d requests from %s and %s during the second open period, want none", n, b.name, c.name)
	}
}

// A config reload keeps the instance in the fleet: its breakers, kept
// by the reload, still follow the trips of the others.
func TestGatewayReloadKeepsFollowing(t *testing.T) {
	rdb := startRedis(t)
	dead := newUpstream(t, http.StatusServiceUnavailable)
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/dead", dead.addr(), deadBreaker)))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	if r := b.mustGet("/dead"); r.outcome != "upstream_status" {
		t.Fatalf("%s before the reload: %q, want upstream_status", b.name, r.outcome)
	}
	b.reload()
	c.reload()
	fl.waitJoined(5 * time.Second)
	learned := tripAndSpread(t, dead, "/dead", a, b, c, 10*time.Second)
	t.Logf("after a reload, %s learned of %s's trip %s after its answer", b.name, a.name, learned.Round(time.Millisecond))
}

// A reset given to one instance lifts a trip everywhere: the instances
// that follow the trip stop following it, and the one that tripped
// closes its breaker; none waits for the rest of the open period.
func TestGatewayResetLiftsTrip(t *testing.T) {
	rdb := startRedis(t)
	dead := newUpstream(t, http.StatusServiceUnavailable)
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/dead", dead.addr(), deadBreaker)))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	tripAndSpread(t, dead, "/dead", a, b, c, 10*time.Second)

	dead.status.Store(http.StatusOK) // the provider is back, and the operator knows it
	if status, body := b.adminDo(http.MethodPost, "/resilient/breakers/reset?upstream="+dead.addr()); status != http.StatusOK {
		t.Fatalf("reset on %s: %d %s", b.name, status, body)
	}
	reset := time.Now()
	for _, g := range fl.gws {
		poll(t, time.Second, g.name+" lets requests through after the reset on "+b.name, func() bool {
			r := g.mustGet("/dead")
			return r.status == http.StatusOK && r.outcome == "ok"
		})
		if v := g.breaker(dead.addr()); v == nil || v.State != "closed" || v.Fleet != nil {
			t.Errorf("%s after the reset on %s: %+v, want a closed breaker following nothing", g.name, b.name, v)
		}
	}
	t.Logf("the reset reached every instance %s after it was given to %s", time.Since(reset).Round(time.Millisecond), b.name)
}

// The Redis password is never shown, however the instances meet Redis:
// sharing state, losing it, refused by it (a wrong password), or given a
// URL that does not parse. Every test of this file checks the logs and
// admin answers of its own instances too (see startFleet); this one
// takes them down the paths that report errors.
func TestGatewaySecretsNeverShown(t *testing.T) {
	rdb := startRedis(t)
	secret := rdb.password
	dead := newUpstream(t, http.StatusServiceUnavailable)
	up := newUpstream(t, http.StatusOK)
	opts := deadBreaker + `
				rate_limit {
					rate 100/s
				}`
	fl := startFleet(t, 3, rdb, routes(proxyRoute("/dead", dead.addr(), opts)+proxyRoute("/*", up.addr(), opts)))
	a, b, c := fl.gws[0], fl.gws[1], fl.gws[2]
	tripAndSpread(t, dead, "/dead", a, b, c, 10*time.Second)
	if status, body := a.adminDo(http.MethodPost, "/resilient/breakers/force_open?upstream=127.0.0.1:1&for=1m"); status != http.StatusOK {
		t.Fatalf("force_open on %s: %d %s", a.name, status, body)
	}

	errorsNow := func(g *gateway) float64 {
		n, _ := g.metric(`caddy_resilient_fleet_errors_total{op="ping"}`)
		return n
	}
	rdb.kill()
	before := map[*gateway]float64{}
	for _, g := range fl.gws {
		// on its own: the rate limit falls back to a share, an override
		// cannot be shared
		if r := g.mustGet("/"); r.status != http.StatusOK {
			t.Errorf("%s without Redis: %d %q", g.name, r.status, r.outcome)
		}
		if status, body := g.adminDo(http.MethodPost, "/resilient/breakers/force_open?upstream=127.0.0.1:2&for=1m"); status != http.StatusOK {
			t.Errorf("force_open on %s without Redis: %d %s", g.name, status, body)
		}
		poll(t, 3*time.Second, g.name+" notices that Redis is gone", func() bool { return !g.fleetConnected() })
		before[g] = errorsNow(g)
	}

	rdb.password = "not-" + secret // a Redis that refuses theirs
	rdb.start()
	for _, g := range fl.gws {
		poll(t, 3*time.Second, g.name+" is refused by Redis", func() bool { return errorsNow(g) > before[g] })
		if g.fleetConnected() {
			t.Errorf("%s joined a Redis that refuses its password", g.name)
		}
	}
	rdb.kill()
	rdb.password = secret
	rdb.start()
	fl.waitJoined(5 * time.Second)

	// a URL that does not parse is refused, and the error shows it
	// redacted
	for _, url := range []string{
		"redis://:" + secret + "@127.0.0.1:99999/0",
		"redis://:" + secret + "/x@127.0.0.1:6379/0", // an unescaped '/'
	} {
		conf := filepath.Join(t.TempDir(), "Caddyfile")
		body := fmt.Sprintf(caddyfile, 1, 1, fmt.Sprintf(proxyRoute("/*", up.addr(), ""), "fleet {\n\t\t\t\t\tredis "+url+"\n\t\t\t\t}"))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(caddyBinary(t), "adapt", "--config", conf, "--validate").CombinedOutput()
		switch {
		case err == nil:
			t.Errorf("caddy adapt accepted the fleet URL %q", url)
		case strings.Contains(string(out), secret):
			t.Errorf("caddy adapt shows the password of a bad fleet URL: %s", out)
		case !strings.Contains(string(out), "xxxxx"):
			t.Errorf("caddy adapt of a bad fleet URL does not say which (redacted): %s", out)
		}
	}
}
