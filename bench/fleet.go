package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// S9 runs several gateways in front of two providers at once: the
// harness's upstream, dead (always 503), under deadRoute, and a chaos
// quota under every other path. The fleet setup joins the gateways
// through a redis-server the harness starts for the run.

const (
	deadRoute  = "/dead/"
	quotaRoute = "/quota/"
)

// s9Route sends every other request to the dead provider.
func s9Route(i int) string {
	if i%2 == 0 {
		return deadRoute
	}
	return quotaRoute
}

// startGateways starts sc's gateways for setup, and for the fleet their
// Redis first; it waits until every gateway serves and, in the fleet,
// is connected to Redis.
func (e *env) startGateways(ctx context.Context, setup string, sc *scenario, bk backends, dir string) ([]*proxy, func(), error) {
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range slices.Backward(cmds) {
			e.children.kill(c)
		}
	}
	fleet := setup == setupFleet
	if fleet {
		cmd, url, err := e.startRedis(ctx, filepath.Join(dir, "redis"))
		if err != nil {
			return nil, nil, err
		}
		cmds = append(cmds, cmd)
		bk.redis = url
	}
	var ps []*proxy
	for i := range sc.Gateways {
		p, err := e.startProxy(ctx, setup, sc, bk, filepath.Join(dir, fmt.Sprintf("gateway-%d", i+1)))
		if err != nil {
			stop()
			return nil, nil, err
		}
		cmds = append(cmds, p.cmd)
		ps = append(ps, p)
	}
	if fleet {
		for _, p := range ps {
			if err := waitFleet(ctx, p.admin); err != nil {
				stop()
				return nil, nil, fmt.Errorf("%s: %v: %s", p.dir, err, tail(p.log))
			}
		}
	}
	return ps, stop, nil
}

// startRedis starts a redis-server on a free loopback port, without
// persistence, and returns its fleet URL once it answers.
func (e *env) startRedis(ctx context.Context, dir string) (*exec.Cmd, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cmd, err := e.runRedis(ctx, dir, port, 1)
	if err != nil {
		return nil, "", err
	}
	return cmd, "redis://127.0.0.1:" + strconv.Itoa(port) + "/0", nil
}

// runRedis starts the n-th redis-server of dir on port, with extra
// arguments after the harness's own (a later option wins), and waits
// until it answers.
func (e *env) runRedis(ctx context.Context, dir string, port, n int, extra ...string) (*exec.Cmd, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logPath := filepath.Join(dir, fmt.Sprintf("redis-%d.log", n))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--loglevel", "warning"}, extra...)
	cmd := exec.Command(e.redis, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	if _, err := e.children.start(cmd); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for !redisAnswers(addr) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			e.children.kill(cmd)
			return nil, fmt.Errorf("redis-server on %s did not answer: %s", addr, tail(logPath))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd, nil
}

// redisAnswers reports whether a Redis at addr replies to PING.
func redisAnswers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// waitFleet waits until the gateway's metrics say it is connected to the
// fleet's Redis.
func waitFleet(ctx context.Context, admin string) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
		if res, err := c.Do(req); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			for line := range strings.Lines(string(b)) {
				if strings.HasPrefix(line, "caddy_resilient_fleet_connected{") && strings.HasSuffix(strings.TrimSpace(line), " 1") {
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not connected to the fleet's Redis within 5s")
}

// gatewayCaddyfile is the whole config of one S9 gateway: the dead
// provider under deadRoute with sc.Resilient, the quota everywhere else
// with sc.ResilientRateLimit; in the fleet, both transports join it.
func gatewayCaddyfile(setup string, sc *scenario, listen, admin string, bk backends) string {
	var b strings.Builder
	fmt.Fprintf(&b, caddySite, admin, listen)
	fleet := ""
	if setup == setupFleet {
		fleet = "\nfleet {\nredis " + bk.redis + "\nprefix bench\n}"
	}
	for _, r := range []struct{ match, upstream, block string }{
		{deadRoute + "*", bk.upstream, sc.Resilient},
		{"", bk.quota, sc.ResilientRateLimit},
	} {
		handle := "\thandle {\n"
		if r.match != "" {
			handle = "\thandle " + r.match + " {\n"
		}
		fmt.Fprintf(&b, "%s\t\treverse_proxy %s {\n", handle, r.upstream)
		writeResilient(&b, "\t\t\t", r.block+fleet, sc.Diag)
		b.WriteString("\t\t}\n\t}\n")
	}
	b.WriteString(diagErrors)
	b.WriteString("}\n")
	return b.String()
}

// analyzeFleet measures S9's rows: for the dead provider, what reached
// it until every gateway refused it, and after; for the quota, what
// the provider saw above its limit.
func analyzeFleet(r *runData, row string, samples []*sample, res *result) {
	if row != "S9 dead" {
		analyzeQuota(r, samples, res)
		res.UpstreamRequests = int(r.up.Requests) // the chaos quota's count
		if res.Requests > 0 {
			res.Amplification = float64(res.UpstreamRequests) / float64(res.Requests)
		}
		return
	}
	sc := r.sc
	gatewayOf := make(map[string]int, len(samples))
	refused := map[int]time.Duration{} // gateway: its first refusal, as the client saw it
	for _, s := range samples {
		gatewayOf[s.ID] = s.Gateway
		if t, ok := refused[s.Gateway]; s.Outcome == "breaker_open" && (!ok || s.Done < t) {
			refused[s.Gateway] = s.Done
		}
	}
	if len(refused) < sc.Gateways {
		res.Extra["all_refused"] = 0
		return
	}
	res.Extra["all_refused"] = 1
	all := slices.Max(slices.Collect(maps.Values(refused)))
	res.Extra["all_refused_ms"] = ms(all)
	before, after := 0, 0
	for id, as := range r.up.Arrivals {
		g, ok := gatewayOf[id]
		if !ok {
			continue
		}
		for _, a := range as {
			if a.At.Sub(r.start) < all {
				before++
				res.Extra[fmt.Sprintf("until_all_refused_g%d", g+1)]++
			} else {
				after++
				res.Extra[fmt.Sprintf("after_all_refused_g%d", g+1)]++
			}
		}
	}
	res.Extra["until_all_refused"] = float64(before)
	res.Extra["after_all_refused"] = float64(after)
	// what one gateway's breaker lets through once open: its half-open
	// probes, each open period
	if span := r.measured - all; span > 0 {
		res.Extra["one_gateway_probes"] = math.Ceil(float64(span)/float64(sc.OpenFor)) * float64(sc.HalfOpen)
	}
}
