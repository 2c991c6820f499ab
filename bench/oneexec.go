package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-resilient/resilient/internal/oneexec"
)

// S10x: the end-to-end proof of one execution per key that the fleet's
// test runs for 20 seconds in CI (fleet/gateway_oneexec_test.go), run
// for minutes: three gateways in one fleet, their Redis, the upstream
// and the clients of internal/oneexec, with a reload of one gateway
// every 45 seconds and Redis killed (SIGKILL) and started again every
// 70 seconds. Its rows are what the check found.

// Every S10x event's period, and how long Redis stays down.
const (
	s10xReloadEvery = 45 * time.Second
	s10xKillEvery   = 70 * time.Second
	s10xKillFirst   = 35 * time.Second
	s10xDownFor     = 2 * time.Second
)

// s10xRedisArgs make Redis keep what it acknowledged across a kill of
// its process: it writes its append-only file before it answers (fsync
// matters to a crash of the machine only). A Redis that comes back
// empty has forgotten the records kept before.
var s10xRedisArgs = []string{"--appendonly", "yes", "--appendfsync", "no"}

// s10xSite is an S10x gateway's whole config: its admin endpoint, its
// logs as JSON lines (where it says when it acts alone), the readiness
// route, the route of internal/oneexec, and errors with the verdict
// headers.
const s10xSite = `{
	admin %s
	persist_config off
	auto_https off
	log default {
		output stderr
		format json
		level INFO
	}
}

http://%s {
	bind 127.0.0.1
	handle /ready {
		respond "ready"
	}
%s	handle_errors {
%s		respond "{http.resilient.outcome}" {http.error.status_code}
	}
}
`

// oneExecCaddyfile is an S10x gateway's config with limits l.
func oneExecCaddyfile(listen, admin string, bk backends, l oneexec.Limits) string {
	fleet := "fleet {\n\tredis " + bk.redis + "\n\tprefix s10x\n}"
	return fmt.Sprintf(s10xSite, admin, listen, oneexec.Route(bk.upstream, fleet, oneexec.DefaultTiming, l), oneexec.ErrorHeaders)
}

// s10xGateway is one running S10x gateway.
type s10xGateway struct {
	*proxy
	name string
	conf string // its Caddyfile
}

// runOneExec runs S10x once: Redis, three gateways, the clients of
// internal/oneexec and the events, then its check.
func (e *env) runOneExec(ctx context.Context, sc *scenario, setup string, rep int) ([]*result, error) {
	seed := e.seed + uint64(rep)
	timing := oneexec.DefaultTiming
	up, err := oneexec.NewUpstream(seed, timing)
	if err != nil {
		return nil, err
	}
	defer up.Close()
	dir := filepath.Join(e.work, "runs", fmt.Sprintf("%s-%s-%d", sc.ID, setup, rep+1))
	redisDir := filepath.Join(dir, "redis")
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	rcmd, err := e.runRedis(ctx, redisDir, port, 1, s10xRedisArgs...)
	if err != nil {
		return nil, err
	}
	defer func() { e.children.kill(rcmd) }()
	bk := backends{upstream: up.Addr(), redis: "redis://127.0.0.1:" + strconv.Itoa(port) + "/0"}

	var gws []*s10xGateway
	defer func() {
		for _, g := range gws {
			e.children.kill(g.cmd)
		}
	}()
	for i := range sc.Gateways {
		g, err := e.startS10xGateway(ctx, string(rune('a'+i)), filepath.Join(dir, fmt.Sprintf("gateway-%d", i+1)), bk)
		if err != nil {
			return nil, err
		}
		gws = append(gws, g)
	}
	joined := func() error {
		for _, g := range gws {
			if err := waitFleet(ctx, g.admin); err != nil {
				return fmt.Errorf("gateway %s: %v", g.name, err)
			}
		}
		return nil
	}
	if err := joined(); err != nil {
		return nil, err
	}

	var events []oneexec.Event
	reloads, kills := 0, 0
	for at, i := s10xReloadEvery, 0; at < sc.Load.Duration; at, i = at+s10xReloadEvery, i+1 {
		g := gws[(i+1)%len(gws)]
		limits := oneexec.ReloadLimits
		if i/len(gws)%2 == 1 {
			limits = oneexec.StartLimits
		}
		events = append(events, oneexec.Event{At: at, Name: fmt.Sprintf("reload %s (ttl %s, max_memory %s)", g.name, limits.TTL, limits.MaxMemory),
			Do: func() error { return g.reload(ctx, oneExecCaddyfile(g.addr, g.admin, bk, limits)) }})
		reloads++
	}
	for at, n := s10xKillFirst, 2; at+s10xDownFor < sc.Load.Duration; at, n = at+s10xKillEvery, n+1 {
		events = append(events,
			oneexec.Event{At: at, Name: "redis-server SIGKILL", Down: true, Do: func() error {
				e.children.crash(rcmd)
				return nil
			}},
			oneexec.Event{At: at + s10xDownFor, Name: "redis-server started again", Up: true, Do: func() error {
				cmd, err := e.runRedis(ctx, redisDir, port, n, s10xRedisArgs...)
				if err != nil {
					return err
				}
				rcmd = cmd
				return joined()
			}})
		kills++
	}

	cfg := oneexec.Config{Seed: seed, Duration: sc.Load.Duration, Clients: 12, Upstream: up, Timing: timing, Events: events,
		Logf: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "[%s rep %d] %s\n", sc.ID, rep+1, fmt.Sprintf(format, args...))
		}}
	for _, g := range gws {
		cfg.Gateways = append(cfg.Gateways, oneexec.Gateway{Name: g.name, Addr: g.addr, Admin: g.admin, Log: g.log})
	}
	report, err := oneexec.Run(ctx, cfg)
	if err != nil {
		return nil, err
	}
	fmt.Fprint(os.Stderr, report.Summary())
	for i, v := range report.Violations {
		if i == 50 {
			fmt.Fprintf(os.Stderr, "... and %d more violations\n", len(report.Violations)-i)
			break
		}
		fmt.Fprintf(os.Stderr, "violation (seed %d): %s\n", seed, v)
	}
	res := oneExecResult(sc, setup, report)
	res.Rep, res.Seed = rep+1, seed
	res.Extra["reloads"], res.Extra["redis_kills"] = float64(reloads), float64(kills)
	return []*result{res}, nil
}

// startS10xGateway starts gateway name with the start limits.
func (e *env) startS10xGateway(ctx context.Context, name, dir string, bk backends) (*s10xGateway, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	g := &s10xGateway{name: name, conf: filepath.Join(dir, "Caddyfile"), proxy: &proxy{setup: setupFleet,
		addr: "127.0.0.1:" + strconv.Itoa(port), admin: "127.0.0.1:" + strconv.Itoa(adminPort), dir: dir, log: filepath.Join(dir, "proxy.log")}}
	if err := os.WriteFile(g.conf, []byte(oneExecCaddyfile(g.addr, g.admin, bk, oneexec.StartLimits)), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(g.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(e.caddy, "run", "--config", g.conf, "--adapter", "caddyfile")
	cmd.Env = append(e.caddyEnv(), "GATEWAY="+name)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	exited, err := e.children.start(cmd)
	if err != nil {
		return nil, err
	}
	g.cmd = cmd
	if err := g.waitReady(ctx, exited); err != nil {
		e.children.kill(cmd)
		return nil, err
	}
	return g, nil
}

// reload loads conf into the gateway through its admin API, as `caddy
// reload` does.
func (g *s10xGateway) reload(ctx context.Context, conf string) error {
	if err := os.WriteFile(g.conf, []byte(conf), 0o644); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+g.admin+"/load", strings.NewReader(conf))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	res, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("reloading %s: %v", g.name, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("reloading %s: %s %s", g.name, res.Status, b)
	}
	return nil
}

// oneExecResult is S10x's row: logical requests and their answers, the
// upstream's executions, and what the check found.
func oneExecResult(sc *scenario, setup string, r *oneexec.Report) *result {
	res := &result{Scenario: sc.ID, Row: sc.ID, Setup: setup, Extra: map[string]float64{}, Outcomes: r.Outcomes,
		Requests: r.Logical, OK: r.Answered, P50: r.Latency.P50, P99: r.Latency.P99, P999: r.Latency.P999,
		UpstreamRequests: r.Executions, Duplicates: r.KeysTwice}
	if r.Logical > 0 {
		res.SuccessPct = 100 * float64(r.Answered) / float64(r.Logical)
		res.Amplification = float64(r.Executions) / float64(r.Logical)
	}
	res.RPS = float64(r.Answered) / r.Load.Seconds()
	x := res.Extra
	for k, v := range map[string]int{
		"keys": r.Keys, "sends": r.Sends, "sweep_sends": r.Sweep, "acting": r.Acting, "keys_executed": r.KeysExecuted,
		"max_executions": r.MaxActing, "exempt_keys": r.ExemptKeys, "exempt_executed_again": r.ExemptExecutedAgain,
		"max_acting_per_instance": r.MaxActingPerInstance, "firsts_identical": r.FirstsIdentical,
		"replays_identical": r.ReplaysIdentical, "replays_cross_instance": r.ReplaysCrossInstance,
		"replays_of_carried": r.ReplaysOfCarried, "sweep_replays": r.SweepReplays, "replays_own_in_window": r.ReplaysOwnInWindow,
		"mismatches": r.Mismatches,
		"violations": len(r.Violations), "in_flight_409": r.InFlight409, "used_409": r.Used409, "mismatch_422": r.Mismatch422,
		"no_answer_replays": r.NoAnswerReplays, "maybe_firsts": r.MaybeFirsts, "refused": r.Refused,
		"client_errors": r.ClientErrors, "probes": r.Probes, "hedged_gets": r.HedgedGets, "windows": len(r.Windows),
	} {
		x[k] = float64(v)
	}
	x["load_s"] = r.Load.Seconds()
	return res
}
