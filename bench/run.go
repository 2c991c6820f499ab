package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// runOne runs one scenario against one setup: fresh upstream, fresh
// proxy, warm-up, measured load.
func (e *env) runOne(ctx context.Context, sc *scenario, setup string, rep int, profile string) ([]*result, error) {
	if sc.OneExec {
		return e.runOneExec(ctx, sc, setup, rep)
	}
	if sc.Shipping != nil {
		return e.runShipping(ctx, sc, setup, rep)
	}
	up, err := startUpstream(sc.Track)
	if err != nil {
		return nil, err
	}
	defer up.close()
	up.seed = e.seed + uint64(rep)
	dir := filepath.Join(e.work, "runs", fmt.Sprintf("%s-%s-%d", sc.ID, setup, rep+1))
	bk := backends{upstream: up.addr}
	var chaos *chaosUpstream
	if sc.Chaos != "" {
		if chaos, err = e.startChaos(ctx, sc.Chaos, filepath.Join(dir, "upstream")); err != nil {
			return nil, err
		}
		defer e.children.kill(chaos.cmd)
		if sc.Gateways > 0 {
			bk.quota = chaos.addr // beside the harness's upstream
		} else {
			bk.upstream = chaos.addr
		}
	}
	ps, stop, err := e.startProxies(ctx, setup, sc, bk, dir)
	if err != nil {
		return nil, err
	}
	defer stop()
	p := ps[0]
	targets, pgids := make([]string, len(ps)), make([]int, len(ps))
	for i, q := range ps {
		targets[i], pgids[i] = q.addr, q.cmd.Process.Pid
	}

	if sc.Load.Closed {
		// throughput runs are the most sensitive to other programs
		// sharing the CPUs: give them a moment to calm down
		waitQuiet(ctx, 5*time.Second)
	}
	generate(ctx, targets, sc.Warmup, time.Now())
	for i := 0; i < 100 && up.inFlight.Load() > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	up.resetCounts()
	up.setFaults(sc.Faults)
	var chaos0 chaosStats
	if chaos != nil {
		time.Sleep(1100 * time.Millisecond) // a fresh quota window, free of the warm-up
		if chaos0, err = chaos.stats(ctx); err != nil {
			return nil, err
		}
	}

	start := time.Now().Add(20 * time.Millisecond)
	var syns *synCounter
	if sc.CountRefused {
		if syns, err = startSynCounter(up.port(), start); err != nil {
			fmt.Fprintf(os.Stderr, "%s: no packet capture on lo (%v); counting refused connects with the kernel's Tcp AttemptFails, which other programs' failed connects inflate\n", sc.ID, err)
		}
	}
	stopAux := make(chan struct{})
	auxDone := make(chan struct{})
	var tl timeline
	if sc.Outage[1] > 0 || sc.CountRefused || len(sc.Stages) > 0 {
		go func() {
			defer close(auxDone)
			tl = e.timeline(sc, up, start, stopAux, syns == nil)
		}()
	} else {
		close(auxDone)
	}
	profDone := make(chan error, 1)
	if profile != "" && p.admin != "" {
		go func() { profDone <- fetchProfile(ctx, p.admin, sc.Load.Duration, profile) }()
	} else {
		profDone <- nil
	}

	var mem *memWatch
	if sc.Memory {
		mem = watchMemory(p.cmd.Process.Pid, start)
	}
	var stopWatch func() []span
	if sc.WatchBreaker && isResilient(setup) {
		stopWatch = watchBreaker(ctx, p.admin, bk.upstream, start)
	}
	load := sc.Load
	if load.Reads != nil {
		// the repetition's targets and callers, the same for every setup
		rd := *load.Reads
		rd.seed = up.seed
		load.Reads = &rd
	}
	cpu0, t0 := readCPU(pgids...), time.Now()
	samples, _, elapsed := generate(ctx, targets, load, start)
	cpu1, wall := readCPU(pgids...), time.Since(t0)
	var open []span
	if stopWatch != nil {
		if open = stopWatch(); open == nil {
			open = []span{} // watched, never seen open
		}
	}
	var memSeen *memStats
	if mem != nil {
		st := mem.stop()
		st.Gauges = readGauges(ctx, p.admin, memGauges)
		memSeen = &st
	}
	if err := <-profDone; err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
	}
	close(stopAux)
	<-auxDone
	if syns != nil {
		tl.syns, tl.synsOK = syns.stop(), true
	}
	// whatever the proxy still sends after the clients gave up counts
	// too; stopping it ends that
	time.Sleep(50 * time.Millisecond)
	stop()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if e.keep {
		writeSamples(filepath.Join(dir, "samples.csv"), samples)
	}
	r := &runData{sc: sc, setup: setup, samples: samples, elapsed: elapsed, start: start,
		up: up.stats(), tl: tl, measured: sc.Load.Duration, mem: memSeen, open: open}
	if chaos != nil {
		c1, err := chaos.stats(ctx)
		if err != nil {
			return nil, err
		}
		r.up.Requests = int64(c1.Passed - chaos0.Passed + c1.Refused - chaos0.Refused)
		r.overLimit = int(c1.Refused - chaos0.Refused)
	}
	out := analyze(r)
	proxyCPU := cpu1.proxy - cpu0.proxy
	foreign := (cpu1.busy - cpu0.busy) - (cpu1.self - cpu0.self) - proxyCPU
	for _, res := range out {
		res.Rep = rep + 1
		res.Seed = up.seed
		// CPU the proxy (all its gateways) spent per client request:
		// steadier than throughput on a shared machine
		res.Extra["proxy_cpu_us_per_req"] = float64(proxyCPU/time.Microsecond) / float64(len(samples))
		res.Extra["proxy_cpu_cores"] = proxyCPU.Seconds() / wall.Seconds()
		// CPU used by neither the harness nor the proxy: other programs;
		// and CPU the hypervisor gave to other guests
		res.Extra["foreign_cpu_cores"] = max(0, foreign.Seconds()/wall.Seconds())
		res.Extra["steal_cpu_cores"] = (cpu1.steal - cpu0.steal).Seconds() / wall.Seconds()
	}
	return out, nil
}

// timeline is what happened to the upstream's port during a run.
type timeline struct {
	outage [2]time.Duration // when the port actually closed and opened again
	// when each of the scenario's stages actually began
	stages []time.Duration
	// SYNs sent to the upstream's port, when a packet capture was possible
	syns   []time.Duration
	synsOK bool
	// otherwise, the kernel's failed-connect counter over the run
	failed []counterSample
}

// timeline applies the scenario's outage or stages, and samples the
// kernel's failed-connect counter when sample is set, until stop is
// closed.
func (e *env) timeline(sc *scenario, up *upstream, start time.Time, stop <-chan struct{}, sample bool) timeline {
	var tl timeline
	refusing, restored := false, false
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	defer func() {
		if refusing {
			up.restore()
		}
	}()
	reopen := func() {
		if err := up.restore(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		refusing = false
	}
	for {
		now := time.Since(start)
		if sc.Outage[1] > 0 {
			if !refusing && !restored && now >= sc.Outage[0] {
				up.refuse()
				refusing, tl.outage[0] = true, time.Since(start)
			}
			if refusing && now >= sc.Outage[1] {
				reopen()
				restored, tl.outage[1] = true, time.Since(start)
			}
		}
		for n := len(tl.stages); n < len(sc.Stages) && now >= sc.Stages[n].At; n++ {
			st := sc.Stages[n]
			if st.Refuse {
				up.refuse()
				refusing = true
			} else {
				// the faults first: nothing may be answered as before
				// once the port opens again
				up.setFaults(st.Faults)
				if refusing {
					reopen()
				}
			}
			tl.stages = append(tl.stages, time.Since(start))
		}
		if sample && sc.CountRefused {
			if v, ok := tcpAttemptFails(); ok {
				tl.failed = append(tl.failed, counterSample{At: now, V: v})
			}
		}
		select {
		case <-stop:
			return tl
		case <-tick.C:
		}
	}
}

// waitQuiet waits, up to max, until the programs other than this one
// use less than a quarter of a CPU over 250ms.
func waitQuiet(ctx context.Context, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		a, t0 := readCPU(), time.Now()
		time.Sleep(250 * time.Millisecond)
		b := readCPU()
		if (b.busy-a.busy-(b.self-a.self)).Seconds()/time.Since(t0).Seconds() < 0.25 {
			return
		}
	}
}

// fetchProfile saves a CPU profile of a Caddy process taken over most
// of the load.
func fetchProfile(ctx context.Context, admin string, d time.Duration, path string) error {
	secs := max(1, int(d.Seconds())-1)
	time.Sleep(300 * time.Millisecond)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs), nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("%s: %s", res.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, res.Body)
	return err
}

// writeSamples keeps a run's samples with -keep, for a closer look.
func writeSamples(path string, samples []sample) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, "id,intended_ms,done_ms,latency_ms,lag_ms,status,outcome,attempts,sends,conflicts,replayed,target,caller,made_ms,age,crossed,wrong")
	for _, s := range samples {
		fmt.Fprintf(f, "%s,%.3f,%.3f,%.3f,%.3f,%d,%s,%d,%d,%d,%t", s.ID, ms(s.Intended), ms(s.Done),
			ms(s.Latency), ms(s.Lag), s.Status, s.Outcome, s.Attempts, s.Sends, s.Conflicts, s.Replayed)
		if r := s.Read; r != nil {
			// S13: what the answer was made for, and when
			fmt.Fprintf(f, ",%s,%s,%.3f,%d,%t,%t\n", itemPath(r.Target), callerAuth(r.Caller), ms(r.Made), r.Age, r.Crossed, r.Wrong)
		} else {
			fmt.Fprintln(f, ",,,,,,")
		}
	}
}
