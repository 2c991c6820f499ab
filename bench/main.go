// Command bench measures the resilient transport against Caddy's own
// `transport http`, nginx and HAProxy, with healthy and misbehaving
// upstreams, all on loopback.
//
// Run it from the repository root:
//
//	go run ./bench                          # every scenario, 3 repetitions; about 112 minutes on 2 cores (S10x: 17)
//	go run ./bench -quick                   # smoke run: runs 3/8 as long, 1 repetition; about 5 minutes
//	go run ./bench -scenarios S9 -quick     # the fleet scenario alone: about 20 s (70 s without -quick)
//	go run ./bench -scenarios S5h -repeat 3 # S5 hard, its target per repetition: about 4 minutes (80 s a repetition)
//	go run ./bench -scenarios S10 -repeat 1 # client retries against idempotency keys: about 2 minutes
//	go run ./bench -scenarios S10m -repeat 1 # idempotency memory, 200 000 keys: 1 to 2 minutes a setup
//	go run ./bench -scenarios S10x -repeat 1 # one execution per key end to end, a fleet of three: 5 minutes and a half
//	go run ./bench -scenarios S10x -duration 20m # the same, longer
//	go run ./bench -scenarios S11,S11x -repeat 1 # the tail, with and without hedges: about 3 minutes
//	go run ./bench -scenarios S12 -repeat 3 # the seed's Python client, its four scenarios: about 40 minutes (under a minute a run)
//	go run ./bench -scenarios S12-slow -setups seed-direct,seed-gateway -repeat 1 # one of them: about 2 minutes
//	go run ./bench -scenarios S13 -repeat 3 # the provider down for 30 s, fallback against nginx's stale cache: about 13 minutes
//	go run ./bench -scenarios S0,S1 -repeat 5 -setups caddy-http,resilient
//	go run ./bench -scenarios S0 -profile   # also CPU-profile the Caddy setups (bench/results/profiles/)
//	go tool pprof -top bench/results/profiles/S0-resilient-*.pprof
//	go run ./bench -keep ...                # keep the configs, proxy logs and per-request samples
//	go run ./bench -cost                    # only the cost ratios: micro-benchmarks, S0, refusals against respond 503
//
// nginx and HAProxy rows need `apt-get install nginx haproxy`, and S9
// (three gateways, with and without a fleet) needs redis-server
// (`apt-get install redis-server`; the harness runs its own on a free
// port); without them they are skipped, with a note. S12 runs its
// clients on /usr/bin/python3 (-python) with Debian's python3-httpx and
// python3-tenacity, and its library rows need clients/python in the
// checkout; without them they are skipped, with a note. Counting the
// refused connects of S2 exactly needs root (a packet socket on lo);
// otherwise the kernel's failed-connect counter stands in.
//
// Scenarios: S0 healthy upstream at full speed; S1 10% 503 on GET; S2
// refused connections for a stretch; S3 a hanging upstream; S4 a slow
// upstream behind a pool limit; S5 POSTs with 503s and resets after the
// body was read, half with Idempotency-Key, and S5h the same at the
// peers' fault rates (20% + 10%, 1500 requests); S6 429 with
// Retry-After; S7 a dead upstream; S8 a provider quota; S9 three
// gateways with and without a fleet; S10 clients that give up after
// 300ms and send their keyed POST again (idempotency at the gateway),
// S10m the memory 200 000 distinct keys cost under max_memory, and
// S10x the end-to-end check of one execution per key (three gateways
// in one fleet, faults, reloads, Redis kills: internal/oneexec);
// S11 a tail of 1s answers on 2% of arrivals (hedged requests), and
// S11x with 10%; S12 the seed's client: Python processes (httpx,
// Tenacity) calling a shipping provider that ignores Idempotency-Key,
// directly, through the shipping site of examples/egress.Caddyfile as
// the file has it, without retries, and with clients/python, against
// 20% 503, 5% answers after 8 s and 10% of POSTs executed then dropped
// (S12-mixed), each of the first two alone (S12-503, S12-slow), and a
// 4 s outage (S12-outage), and `-scenarios S12` runs all four; S13
// reads of 300 targets by 4 callers while the provider refuses,
// answers 503, then hangs, 10 s each (a fallback against nginx's stale
// cache). `go run ./bench -scenarios X` with an unknown X lists them.
//
// Before any run, each Caddy setup's Caddyfile is adapted once: a setup
// whose options this Caddy does not have (a feature not built yet)
// fails then, named, with Caddy's message (listed under "failed" in the
// report, and its targets NOT YET), the other setups run, and bench
// exits 1.
//
// It builds the project's Caddy once (go build ./cmd/caddy), then for
// every scenario, repetition and setup, in an order rotated per
// repetition: starts a fresh upstream in this process (a Go HTTP server
// on 127.0.0.1 whose faults the harness controls and which records what
// reaches it), starts the proxy as a child process (Caddy with
// transport http, Caddy with transport resilient, nginx, HAProxy; the
// last two only when installed; S9 runs three Caddy gateways, and for
// the fleet a redis-server), warms it up, resets the upstream's counts,
// drives the load, and stops the proxy. S0 and S10m are closed-loop
// (max throughput); the others are open-loop at a fixed rate, with
// latency counted from each request's intended send time, so a stalled
// proxy is charged for the whole stall (no coordinated omission). In
// S10 a request is a logical one: its latency runs from its intended
// time to its last answer, across the client's resends. S12 has its own
// provider (shipping.go) and drives it with a Python process per run
// (bench/s12/drive.py), 500 logical operations at 12.5 a second; an
// operation's latency runs from its intended start to what the
// application is told, across its client's retries.
//
// It prints a markdown table of the medians over the repetitions
// (success %, p50/p99/p99.9 latency over all requests, failed ones
// included, successful requests per second, upstream requests per client
// request, duplicated POSTs seen by the upstream), checks the targets of
// the benchmark issue (MET / NOT MET / NOT YET), and writes everything,
// every run included, as JSON to -out.
//
// Every child process runs in its own process group, which is killed
// when its run ends, and all of them on error or interrupt (Ctrl-C).
// All traffic stays on 127.0.0.1, on ports picked at random.
//
// Files: scenarios.go (the scenarios, and how a run is analysed),
// run.go (one run), load.go (the load generator), upstream.go (the
// upstream), proxies.go (the proxies' configs and start), adapt.go
// (each Caddy setup's config adapted before the runs), fleet.go (S9:
// the gateways, their Redis, the analysis), clientretry.go (S10: the
// client that sends again, executions per logical request),
// memory.go (S10m: the gateway's RSS and gauges), oneexec.go (S10x:
// the fleet, its events, the check's report as a row), tail.go (S11: extra
// attempts against the retry budget's bound), fallback.go (S13: the
// readers that check whose answer they got, the breaker watch, the
// analysis), shipping.go (S12's provider), seedclient.go (S12: its
// scenarios and runs), seedclient_analysis.go (S12: what the
// application was told against what the provider did, and its
// targets), s12/ (S12's Python: the seed's client, the library's, the
// application that drives them), example.go (a site of an example
// Caddyfile, run as written), chaos.go (S8's quota upstream), cost.go
// (-cost), host.go (child processes, CPU accounting, SYN capture),
// report.go (table, targets, JSON).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(mainCode())
}

type options struct {
	quick     bool
	scenarios string
	setups    string
	repeat    int
	out       string
	profile   bool
	keep      bool
	seed      uint64
	cost      bool
	python    string
	duration  time.Duration
}

func mainCode() int {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "smoke run: runs 3/8 as long and one repetition (about a minute)")
	flag.StringVar(&o.scenarios, "scenarios", "", "comma-separated scenarios to run, e.g. S0,S1 (default all)")
	flag.StringVar(&o.setups, "setups", "", "comma-separated setups to run (default all): "+strings.Join(allSetups, ","))
	flag.IntVar(&o.repeat, "repeat", 3, "repetitions of each run; the table shows medians")
	flag.StringVar(&o.out, "out", "bench/results/latest.json", "where to write the JSON results")
	flag.BoolVar(&o.profile, "profile", false, "CPU-profile the Caddy setups during each run, through the admin endpoint's /debug/pprof/profile, into profiles/ beside -out (the profiler costs a little throughput)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs and proxy logs)")
	flag.BoolVar(&o.cost, "cost", false, "measure only what the transport costs, as ratios: micro-benchmarks, S0 against transport http, and open-breaker refusals against respond 503 (-repeat rounds, default 3)")
	flag.StringVar(&o.python, "python", "/usr/bin/python3", "the Python that runs S12's clients; it needs httpx and Tenacity (Debian: python3-httpx python3-tenacity)")
	flag.DurationVar(&o.duration, "duration", 0, "how long S10x's load runs (default 5m; -quick: 3/8 of it); the other scenarios keep their own schedules")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the upstream's fault draws; repetition r uses seed+r-1, the same for every setup")
	flag.Parse()
	repeatSet := false
	flag.Visit(func(f *flag.Flag) { repeatSet = repeatSet || f.Name == "repeat" })
	if o.quick && !repeatSet {
		o.repeat = 1
	}
	if o.repeat < 1 {
		fmt.Fprintln(os.Stderr, "bench: -repeat must be >= 1")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kids := newChildren()
	defer kids.killAll()
	go func() {
		<-ctx.Done()
		kids.killAll() // at once, not when the current run notices
	}()

	if err := run(ctx, o, kids); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	return 0
}

func run(ctx context.Context, o options, kids *children) error {
	began := time.Now()
	root, err := repoRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "resilient-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "work directory:", work)
	} else {
		defer os.RemoveAll(work)
	}
	e := &env{root: root, work: work, caddy: filepath.Join(work, "caddy"), children: kids, keep: o.keep, seed: o.seed, python: o.python}

	fmt.Fprintln(os.Stderr, "building ./cmd/caddy ...")
	build := exec.CommandContext(ctx, "go", "build", "-o", e.caddy, "./cmd/caddy")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/caddy: %v", err)
	}
	if o.cost {
		return e.runCost(ctx, o.repeat, os.Stdout)
	}
	var skipped []string
	if p, err := exec.LookPath("nginx"); err == nil {
		e.nginx = p
	} else {
		skipped = append(skipped, "nginx: not installed, its rows are skipped (apt-get install nginx)")
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		e.haproxy = p
	} else {
		skipped = append(skipped, "haproxy: not installed, its rows are skipped (apt-get install haproxy)")
	}

	scs, err := selectScenarios(o)
	if err != nil {
		return err
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		e.redis = p
	} else if slices.ContainsFunc(scs, func(sc *scenario) bool { return sc.Gateways > 0 }) {
		skipped = append(skipped, "redis-server: not installed, S9 is skipped (apt-get install redis-server)")
		scs = slices.DeleteFunc(scs, func(sc *scenario) bool { return sc.Gateways > 0 })
	}
	if slices.ContainsFunc(scs, func(sc *scenario) bool { return sc.Shipping != nil }) {
		if out, err := exec.CommandContext(ctx, e.python, "-c", "import httpx, tenacity").CombinedOutput(); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s without httpx and Tenacity (%s): S12 is skipped (apt-get install python3-httpx python3-tenacity)",
				e.python, strings.TrimSpace(lastLine(string(out), err))))
			scs = slices.DeleteFunc(scs, func(sc *scenario) bool { return sc.Shipping != nil })
		} else if _, err := os.Stat(filepath.Join(root, "clients", "python")); err != nil {
			skipped = append(skipped, "clients/python: not in this checkout, S12's library-gateway rows are skipped")
			for _, sc := range scs {
				if sc.Shipping != nil {
					sc.Setups = slices.DeleteFunc(slices.Clone(sc.Setups), func(s string) bool { return s == setupLibraryGateway })
				}
			}
		}
	}
	shown := map[[2]string]bool{} // the config is in the first scenario's doc that runs it
	for _, sc := range scs {
		if sc.Example[0] == "" {
			continue
		}
		if sc.example, err = loadExampleSite(root, sc.Example[0], sc.Example[1]); err != nil {
			return err
		}
		if shown[sc.Example] {
			continue
		}
		shown[sc.Example] = true
		conf := sc.example.config("127.0.0.1:<port>", "127.0.0.1:<admin port>", "127.0.0.1:<provider port>")
		sc.Doc += "\n\n  The gateway's Caddyfile, as run (the example's site; the harness sets only the listener, the upstream, " +
			"the admin endpoint and the global defaults it always sets):\n\n  ```caddyfile\n"
		for line := range strings.Lines(conf) {
			if strings.TrimSpace(line) == "" {
				sc.Doc += "\n"
			} else {
				sc.Doc += "  " + line
			}
		}
		sc.Doc += "  ```"
	}
	var profDir string
	if o.profile {
		profDir = filepath.Join(filepath.Dir(o.out), "profiles")
		if err := os.MkdirAll(profDir, 0o755); err != nil {
			return err
		}
	}

	setupsOf := func(sc *scenario) []string {
		var setups []string
		for _, s := range sc.Setups {
			if (s == setupNginx && e.nginx == "") || (s == setupHAProxy && e.haproxy == "") {
				continue
			}
			if o.setups == "" || containsFold(o.setups, s) {
				setups = append(setups, s)
			}
		}
		return setups
	}
	// failures, by scenario and setup: configs that do not adapt, and runs that broke
	failures, err := e.checkConfigs(ctx, scs, setupsOf)
	if err != nil {
		return err
	}
	var failed []string
	for _, sc := range scs {
		for _, setup := range setupsOf(sc) {
			if msg, ok := failures[runKey{sc.ID, setup}]; ok {
				fmt.Fprintln(os.Stderr, msg)
				failed = append(failed, msg)
			}
		}
	}

	var results []*result
	for _, sc := range scs {
		var setups []string
		for _, s := range setupsOf(sc) {
			if _, bad := failures[runKey{sc.ID, s}]; !bad {
				setups = append(setups, s)
			}
		}
		for rep := range o.repeat {
			for i := range setups {
				setup := setups[(i+rep)%len(setups)] // interleave: rotate the order per repetition
				prof := ""
				if profDir != "" && setup != setupNginx && setup != setupHAProxy {
					prof = filepath.Join(profDir, fmt.Sprintf("%s-%s-%d.pprof", sc.ID, setup, rep+1))
				}
				t0 := time.Now()
				rs, err := e.runOne(ctx, sc, setup, rep, prof)
				if err != nil {
					if ctx.Err() != nil {
						return err
					}
					// one broken run should not cost the other ten minutes
					msg := fmt.Sprintf("%s %s rep %d failed: %v", sc.ID, setup, rep+1, err)
					fmt.Fprintln(os.Stderr, msg)
					failed = append(failed, msg)
					failures[runKey{sc.ID, setup}] = msg
					continue
				}
				for _, r := range rs {
					fmt.Fprintf(os.Stderr, "[%s rep %d/%d] %-20s ok %6.2f%%  p50 %7sms  p99 %7sms  %6.0f ok/s  amp %.3f  (%.1fs)\n",
						r.Row, rep+1, o.repeat, setup, r.SuccessPct, num(r.P50), num(r.P99), r.RPS, r.Amplification, time.Since(t0).Seconds())
				}
				results = append(results, rs...)
			}
		}
	}

	sums := summarize(scs, results)
	targets := evaluate(sums, failures)
	m := describeMachine(e)
	w := os.Stdout
	command := strings.TrimSpace("go run ./bench " + strings.Join(os.Args[1:], " "))
	fmt.Fprintf(w, "\n## Results: `%s` (%d repetition(s), medians)\n\n", command, o.repeat)
	writeMachine(w, m)
	for _, s := range skipped {
		fmt.Fprintln(w, "- skipped:", s)
	}
	for _, s := range failed {
		fmt.Fprintln(w, "- failed:", s)
	}
	fmt.Fprintln(w)
	writeTable(w, sums)
	writeFallbackTable(w, sums)
	fmt.Fprintln(w, "\n### Targets")
	fmt.Fprintln(w)
	writeTargets(w, targets)
	fmt.Fprintln(w, "\n### Configurations")
	fmt.Fprintln(w)
	var docs []scDoc
	for _, sc := range scs {
		fmt.Fprintf(w, "- **%s** %s. %s\n", sc.ID, sc.Title, sc.Doc)
		docs = append(docs, scDoc{ID: sc.ID, Title: sc.Title, Config: sc.Doc})
	}
	elapsed := time.Since(began)
	fmt.Fprintf(w, "\nTotal time: %.0fs\n", elapsed.Seconds())

	rep := &report{
		Command:   command,
		Started:   began.UTC().Format(time.RFC3339),
		Seconds:   elapsed.Seconds(),
		Machine:   m,
		Skipped:   skipped,
		Failed:    failed,
		Scenarios: docs,
		Runs:      results,
		Summary:   sums,
		Targets:   targets,
	}
	if err := writeJSON(o.out, rep); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "wrote", o.out)
	if len(failed) > 0 {
		return fmt.Errorf("%d setup(s) or run(s) failed: see \"failed\" above", len(failed))
	}
	return nil
}

func selectScenarios(o options) ([]*scenario, error) {
	all := scenarios(o.quick)
	for _, sc := range all {
		if sc.OneExec && o.duration > 0 {
			sc.Load.Duration = o.duration
		}
	}
	if o.scenarios == "" {
		return all, nil
	}
	var out []*scenario
	for _, id := range strings.Split(o.scenarios, ",") {
		id = strings.TrimSpace(id)
		found := false
		for _, sc := range all {
			if strings.EqualFold(sc.ID, id) || strings.EqualFold(sc.Family, id) {
				out = append(out, sc)
				found = true
			}
		}
		if !found {
			var ids []string
			for _, sc := range all {
				if sc.Family != "" && !slices.Contains(ids, sc.Family+" (all of "+sc.Family+"-*)") {
					ids = append(ids, sc.Family+" (all of "+sc.Family+"-*)")
				}
				ids = append(ids, sc.ID)
			}
			return nil, fmt.Errorf("unknown scenario %q (%s)", id, strings.Join(ids, ", "))
		}
	}
	return out, nil
}

// lastLine is the last line of a command's output (a Python traceback's error), or its error.
func lastLine(out string, err error) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return err.Error()
	}
	lines := strings.Split(out, "\n")
	return lines[len(lines)-1]
}

func containsFold(list, s string) bool {
	for _, x := range strings.Split(list, ",") {
		if strings.EqualFold(strings.TrimSpace(x), s) {
			return true
		}
	}
	return false
}

// repoRoot finds the module root from the working directory up.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/caddy-resilient/resilient") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the repository (go run ./bench)")
		}
		dir = parent
	}
}
