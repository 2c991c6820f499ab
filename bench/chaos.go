package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// chaosUpstream is an upstream made of this repository's Caddy running
// a chaos fault in front of `respond 200` (S8's provider quota). Its
// site matches any Host: nginx sends the upstream block's name.
type chaosUpstream struct {
	addr string
	cmd  *exec.Cmd
}

// chaosStats are chaos's quota counts (X-Chaos-Stats).
type chaosStats struct {
	Passed  uint64 `json:"quota_passed"`
	Refused uint64 `json:"quota_refused"`
}

func (e *env) startChaos(ctx context.Context, fault, dir string) (*chaosUpstream, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &chaosUpstream{addr: "127.0.0.1:" + strconv.Itoa(port)}
	cfg := filepath.Join(dir, "Caddyfile")
	body := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
}

http://:%d {
	bind 127.0.0.1
	chaos {
		%s
	}
	respond "ok"
}
`, port, fault)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "upstream.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd = exec.Command(e.caddy, "run", "--config", cfg, "--adapter", "caddyfile")
	c.cmd.Env = e.caddyEnv()
	c.cmd.Dir, c.cmd.Stdout, c.cmd.Stderr = dir, logf, logf
	if _, err := e.children.start(c.cmd); err != nil {
		return nil, err
	}
	if err := waitStatus(ctx, c.addr, http.StatusOK); err != nil {
		e.children.kill(c.cmd)
		return nil, fmt.Errorf("chaos upstream: %v: %s", err, tail(filepath.Join(dir, "upstream.log")))
	}
	return c, nil
}

// stats reads the quota's counts.
func (c *chaosUpstream) stats(ctx context.Context) (chaosStats, error) {
	var s chaosStats
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+"/", nil)
	req.Header.Set("X-Chaos-Stats", "1")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return s, err
	}
	defer res.Body.Close()
	err = json.NewDecoder(res.Body).Decode(&s)
	return s, err
}
