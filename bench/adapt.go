package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Before any run, every Caddy setup's Caddyfile is adapted once: a
// setup whose options this Caddy does not know (a feature not built
// yet) then fails at once, named, with Caddy's message, instead of
// costing a run or going missing from the table unexplained.

// runKey names a setup in a scenario.
type runKey struct{ scenario, setup string }

// checkConfigs adapts the config of every Caddy setup in scs (setupsOf
// picks a scenario's setups) and returns the ones that do not adapt,
// with why. Identical configs are adapted once.
func (e *env) checkConfigs(ctx context.Context, scs []*scenario, setupsOf func(*scenario) []string) (map[runKey]string, error) {
	dir := filepath.Join(e.work, "adapt")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// placeholders: adapting opens no port and dials nothing
	bk := backends{upstream: "127.0.0.1:9", quota: "127.0.0.1:9", redis: "redis://127.0.0.1:9/0"}
	seen := map[string]string{} // config: its error, "" when it adapts
	bad := map[runKey]string{}
	for _, sc := range scs {
		for _, setup := range setupsOf(sc) {
			if !isCaddy(setup) {
				continue
			}
			conf := caddyConfig(setup, sc, "127.0.0.1:1", "127.0.0.1:2", bk)
			msg, ok := seen[conf]
			if !ok {
				path := filepath.Join(dir, fmt.Sprintf("%d.Caddyfile", len(seen)+1))
				if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
					return nil, err
				}
				msg = e.adapt(ctx, path)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				seen[conf] = msg
			}
			if msg != "" {
				bad[runKey{sc.ID, setup}] = fmt.Sprintf("%s %s: this Caddy does not adapt the setup's Caddyfile: %s", sc.ID, setup, msg)
			}
		}
	}
	return bad, nil
}

var caddyfileLine = regexp.MustCompile(`Caddyfile:(\d+)`)

// adapt runs `caddy adapt` on the Caddyfile at path and returns Caddy's
// error message, with the line it names, or "" when it adapts.
func (e *env) adapt(ctx context.Context, path string) string {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.caddy, "adapt", "--config", path, "--adapter", "caddyfile")
	cmd.Env = e.caddyEnv()
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = nil, &stderr
	err := cmd.Run()
	if err == nil {
		return ""
	}
	msg := adaptMessage(stderr.String())
	if msg == "" {
		msg = err.Error()
	}
	if m := caddyfileLine.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		if b, rerr := os.ReadFile(path); rerr == nil {
			if lines := strings.Split(string(b), "\n"); n >= 1 && n <= len(lines) {
				msg += fmt.Sprintf(" (line %d: `%s`)", n, strings.TrimSpace(lines[n-1]))
			}
		}
	}
	return msg
}

// adaptMessage picks Caddy's error out of its log lines (JSON) or
// plain output.
func adaptMessage(out string) string {
	var last string
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var entry struct{ Level, Msg, Error string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg != "" {
			if entry.Level == "error" || entry.Level == "fatal" {
				last = entry.Msg
				if entry.Error != "" {
					last += ": " + entry.Error
				}
			}
			continue
		}
		last = strings.TrimPrefix(line, "Error: ")
	}
	return last
}

// caddyEnv is the environment of every Caddy the harness runs: its
// config and data directories in the work directory, not the user's.
func (e *env) caddyEnv() []string {
	return append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(e.work, "xdg-config"),
		"XDG_DATA_HOME="+filepath.Join(e.work, "xdg-data"))
}
