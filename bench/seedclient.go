package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// S12: the seed's client. Real Python processes run a service's calls
// to a shipping provider that ignores Idempotency-Key and misbehaves
// (shipping.go), with the client a FastAPI service is taught to write
// (bench/s12/seed_client.py: httpx, Tenacity, one key per operation),
// directly and through the gateway as the shipping site of
// examples/egress.Caddyfile configures it (example.go), and with the
// project's client library (clients/python, when the checkout has it).
// What counts is what the application was told of each operation
// against what the provider did: executions per POST, POSTs executed
// twice, POSTs executed while the application was told they failed, and
// those it was told are unknown.

// The setups of S12: which client, and whether through the gateway.
const (
	setupSeedDirect     = "seed-direct"     // the seed's client, straight to the provider
	setupSeedGateway    = "seed-gateway"    // the seed's client, through the example's site
	setupThinGateway    = "thin-gateway"    // the seed's client without Tenacity (one try), through the site
	setupLibraryGateway = "library-gateway" // the client library (clients/python), through the site
)

// shippingSetups are S12's setups, in table order.
var shippingSetups = []string{setupSeedDirect, setupSeedGateway, setupThinGateway, setupLibraryGateway}

// shippingClientOf is the client drive.py runs in setup.
func shippingClientOf(setup string) string {
	switch setup {
	case setupThinGateway:
		return "thin"
	case setupLibraryGateway:
		return "library"
	}
	return "seed"
}

// shippingSpec is an S12 load: Ops logical operations, started at Rate a
// second (open loop), two in three creating a shipment (POST), one in
// three reading one (GET), against a provider with Faults.
type shippingSpec struct {
	Ops    int
	Rate   float64
	Faults shippingFaults
}

// window is how long the operations take to start.
func (sp *shippingSpec) window() time.Duration {
	return time.Duration(float64(sp.Ops) / sp.Rate * float64(time.Second))
}

// The example site S12's gateway runs.
const (
	shippingExample     = "examples/egress.Caddyfile"
	shippingExampleSite = "http://shipping.internal:8080"
)

// shippingScenarios are S12's four runs: the faults of single requests
// together, each alone, and the outage. count scales the operations
// (-quick).
func shippingScenarios(count func(int) int) []*scenario {
	// 500 operations in 40 s: a 4 s outage meets 50 of them, and a run
	// lasts about a minute (the last ones may take 17 s: three 5 s reads
	// and two waits)
	const rate = 12.5
	ops := count(500)
	sp := shippingSpec{Ops: ops, Rate: rate}
	mid := sp.window() / 2
	outage := [2]time.Duration{mid - 2*time.Second, mid + 2*time.Second}
	slow := 8 * time.Second
	outageDoc := fmt.Sprintf("a 4 s outage from %.1fs to %.1fs (the port closed, connects refused, open connections closed)",
		outage[0].Seconds(), outage[1].Seconds())
	mk := func(id, title string, f shippingFaults, out [2]time.Duration) *scenario {
		spec := sp
		spec.Faults = f
		return &scenario{
			ID: id, Title: title, Family: "S12",
			Setups:   shippingSetups,
			Shipping: &spec,
			Outage:   out,
			Example:  [2]string{shippingExample, shippingExampleSite},
			Doc:      "S12-mixed's operations, setups and provider, with this fault alone.",
		}
	}
	// the faults that meet single requests; the outage, which meets
	// every request for a while (and a gateway's breaker), has its own
	mixed := mk("S12-mixed", "the seed's client, mixed faults: 20% 503, 5% answered after 8 s, 10% of POSTs executed then "+
		"the connection dropped", shippingFaults{P503: 0.20, PSlow: 0.05, Slow: slow, PDrop: 0.10}, [2]time.Duration{})
	mixed.Doc = fmt.Sprintf("%d logical operations, %g a second (open loop), each by a Python process "+
		"(/usr/bin/python3, Debian's httpx and Tenacity) running bench/s12/drive.py: two in three create a shipment "+
		"(POST, one Idempotency-Key per operation, kept across its retries), one in three read one (GET). "+
		"seed-direct: bench/s12/seed_client.py as the seed teaches (shared AsyncClient, Timeout(connect=2, read=5, "+
		"write=5, pool=1), Tenacity 3 tries, exponential waits 0.5-5 s, 5xx and connection errors -> "+
		"ExternalAPIUnavailableError, timeouts -> ExternalAPITimeoutError, other 4xx -> ExternalAPIBadResponseError, "+
		"not retried) straight to the provider; seed-gateway: the same through the shipping site of %s as the file "+
		"has it; thin-gateway: the same client without Tenacity (one try); library-gateway: bench/s12/library_client.py, "+
		"the same operations on clients/python as its README teaches (gateway_client, which sends X-Request-Timeout; "+
		"idempotent around Tenacity's 3 tries with retry_if_gateway_says and wait_gateway; its exceptions, "+
		"ExternalAPIOutcomeUnknownError told as unknown), through the same site (skipped when the checkout has no "+
		"clients/python). The provider ignores the key and executes every POST it accepts; its 503s carry no "+
		"Retry-After; one seeded draw per arrival (operation, and which arrival of it) picks its fault, the same in every "+
		"setup. Success is what the application was told; an execution is a shipment the provider created; "+
		"\"cut\" is an execution whose connection the provider ended without an answer (a drop, or the outage "+
		"closing it while a slow answer was pending): nobody can know its result without asking the provider.",
		ops, rate, shippingExample)
	return []*scenario{
		mixed,
		mk("S12-503", "the seed's client, 20% 503 only", shippingFaults{P503: 0.20}, [2]time.Duration{}),
		mk("S12-slow", "the seed's client, 5% answered after 8 s only", shippingFaults{PSlow: 0.05, Slow: slow}, [2]time.Duration{}),
		mk("S12-outage", "the seed's client, "+outageDoc+" only", shippingFaults{}, outage),
	}
}

// opRecord is one operation as drive.py reports it.
type opRecord struct {
	Op       string  `json:"op"`
	Method   string  `json:"method"`
	Intended float64 `json:"intended"` // seconds since the start
	Done     float64 `json:"done"`
	Verdict  string  `json:"verdict"` // what the application was told
	Status   int     `json:"status"`  // of the last answer, 0 when the last try got none
	Tries    int     `json:"tries"`
	Outcome  string  `json:"outcome"`  // X-Resilient-Outcome of the last answer
	Executed string  `json:"executed"` // X-Resilient-Executed of the last answer
	Error    string  `json:"error"`
}

// runShipping runs one S12 scenario against one setup: a fresh
// provider, the example's gateway unless direct, and the Python
// application.
func (e *env) runShipping(ctx context.Context, sc *scenario, setup string, rep int) ([]*result, error) {
	prov, err := startShipping(e.seed + uint64(rep))
	if err != nil {
		return nil, err
	}
	defer prov.close()
	dir := filepath.Join(e.work, "runs", fmt.Sprintf("%s-%s-%d", sc.ID, setup, rep+1))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	base := "http://" + prov.up.addr
	stop := func() {}
	var pgids []int
	if setup != setupSeedDirect {
		ps, st, err := e.startProxies(ctx, setup, sc, backends{upstream: prov.up.addr}, dir)
		if err != nil {
			return nil, err
		}
		defer st()
		stop, base = st, "http://"+ps[0].addr
		pgids = append(pgids, ps[0].cmd.Process.Pid)
	}
	prov.setFaults(sc.Shipping.Faults)

	// Python starts in a fifth of a second here; the first operation is
	// due well after that
	start := time.Now().Add(2 * time.Second)
	stopAux, auxDone := make(chan struct{}), make(chan struct{})
	var tl timeline
	go func() {
		defer close(auxDone)
		if sc.Outage[1] > 0 {
			tl = e.timeline(sc, prov.up, start, stopAux, false)
		}
	}()
	cpu0, t0 := readCPU(pgids...), time.Now()
	recs, clientCPU, err := e.drive(ctx, sc, setup, base, start, dir)
	cpu1, wall := readCPU(pgids...), time.Since(t0)
	close(stopAux)
	<-auxDone
	time.Sleep(50 * time.Millisecond)
	stop()
	if err != nil {
		return nil, err
	}
	samples := make([]sample, 0, len(recs))
	ops := make(map[string]opRecord, len(recs))
	for _, rec := range recs {
		samples = append(samples, rec.sample())
		ops[rec.Op] = rec
	}
	r := &runData{sc: sc, setup: setup, samples: samples, elapsed: sc.Shipping.window(), start: start,
		tl: tl, measured: sc.Shipping.window(), ship: prov.arrivals(), ops: ops}
	out := analyze(r)
	proxyCPU := cpu1.proxy - cpu0.proxy
	foreign := (cpu1.busy - cpu0.busy) - (cpu1.self - cpu0.self) - proxyCPU - clientCPU
	for _, res := range out {
		res.Rep = rep + 1
		res.Seed = prov.seed
		// a busy machine stretches the gateway's and the client's
		// timeouts alike: say so next to the numbers
		res.Extra["proxy_cpu_cores"] = proxyCPU.Seconds() / wall.Seconds()
		res.Extra["client_cpu_cores"] = clientCPU.Seconds() / wall.Seconds()
		res.Extra["foreign_cpu_cores"] = max(0, foreign.Seconds()/wall.Seconds())
		res.Extra["steal_cpu_cores"] = (cpu1.steal - cpu0.steal).Seconds() / wall.Seconds()
	}
	return out, nil
}

// drive runs bench/s12/drive.py with setup's client against base and
// returns its operations, and the CPU time the client used.
func (e *env) drive(ctx context.Context, sc *scenario, setup, base string, start time.Time, dir string) ([]opRecord, time.Duration, error) {
	sp := sc.Shipping
	outPath, logPath := filepath.Join(dir, "ops.jsonl"), filepath.Join(dir, "client.log")
	out, err := os.Create(outPath)
	if err != nil {
		return nil, 0, err
	}
	defer out.Close()
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, 0, err
	}
	defer logf.Close()
	cmd := exec.Command(e.python, filepath.Join(e.root, "bench", "s12", "drive.py"),
		"--client", shippingClientOf(setup), "--base-url", base,
		"--ops", strconv.Itoa(sp.Ops), "--rate", strconv.FormatFloat(sp.Rate, 'f', -1, 64),
		"--start", strconv.FormatFloat(float64(start.UnixNano())/1e9, 'f', 6, 64),
		"--library", filepath.Join(e.root, "clients", "python"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, out, logf
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "NO_PROXY=*", "no_proxy=*")
	exited, err := e.children.start(cmd)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %v", e.python, err)
	}
	// the last operation starts at the window's end; none lasts longer
	// than three 5 s reads, their waits and three 2 s connects
	limit := time.Until(start) + sp.window() + 60*time.Second
	select {
	case <-exited:
	case <-ctx.Done():
		e.children.kill(cmd)
		return nil, 0, ctx.Err()
	case <-time.After(limit):
		e.children.kill(cmd)
		return nil, 0, fmt.Errorf("%s client still running after %s: %s", setup, limit.Round(time.Second), tail(logPath))
	}
	e.children.release(cmd)
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		return nil, 0, fmt.Errorf("%s client exited with %d: %s", setup, code, tail(logPath))
	}
	f, err := os.Open(outPath)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var recs []opRecord
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		var rec opRecord
		if err := json.Unmarshal(lines.Bytes(), &rec); err != nil {
			return nil, 0, fmt.Errorf("%s: %v", outPath, err)
		}
		recs = append(recs, rec)
	}
	if err := lines.Err(); err != nil {
		return nil, 0, err
	}
	if len(recs) != sp.Ops {
		return nil, 0, fmt.Errorf("%s client reported %d operations of %d: %s", setup, len(recs), sp.Ops, tail(logPath))
	}
	return recs, cpu, nil
}

// sample is the operation as a row's sample: its latency from its
// intended start, and what the application was told as its outcome.
func (rec opRecord) sample() sample {
	cl := classGet
	if rec.Method == "POST" {
		cl = classPostKey
	}
	sec := func(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
	s := sample{ID: rec.Op, Class: cl, Intended: sec(rec.Intended), Done: sec(rec.Done),
		Status: rec.Status, Outcome: rec.Verdict, Attempts: rec.Tries, Sends: rec.Tries}
	s.Latency = s.Done - s.Intended
	if rec.Verdict != "ok" && s.ok() {
		s.Status = 0 // told it failed after a 2xx (an answer it could not use): not a success
	}
	return s
}
