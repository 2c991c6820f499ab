package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// S10m: what the idempotency records cost the gateway's process in
// resident memory, when far more keys arrive than max_memory holds.

// memSlack is what the S10m target allows above max_memory: 32 MiB,
// for what the gauge does not count. The gauge counts kept answers (body
// and headers); the process also pays for each record's bookkeeping
// (key hash, fingerprint, map and list entries: some 200 bytes, ~11 MiB
// over the ~55 000 records that 64 MiB of 1 KiB answers make), for Go's
// size classes (an object is rounded up to its class, up to 1/8 more),
// and for the load itself (64 connections' buffers and goroutines on
// both sides of the proxy, the garbage of the requests in flight): the
// resilient row, the same load without records, grew by 5 to 6 MiB in
// two runs on the 2-core machine of RESULTS.md. It does not cover the
// collector's headroom over the records themselves: with GOGC=100 the
// heap may grow to twice its live data before a collection, so a store
// that holds a full 64 MiB can show up to about as much again in RSS.
// The notes give Go's heap in use and next GC target after the load,
// to tell the two apart.
const memSlack = 32 << 20

// memLimit is S10m's max_memory.
const memLimit = 64 << 20

// memStats is what memWatch saw of a process, in bytes.
type memStats struct {
	Before, After int64
	Peak          int64         // the largest sample
	PeakAt        time.Duration // since the load started
	HWM           int64         // the kernel's high-water mark at the end (VmHWM): a peak between samples too
	Samples       []counterSample
	// Gauges are the gateway's metrics of memGauges at the end, those it has.
	Gauges map[string]float64
}

// memGauges are read from the gateway's admin /metrics after the load:
// what its idempotency records keep, and Go's heap, which tells the
// records from the collector's headroom.
var memGauges = []string{"caddy_resilient_idempotency_bytes", "go_memstats_heap_inuse_bytes", "go_memstats_next_gc_bytes", "go_gc_gogc_percent"}

// memWatch samples a process's resident memory (VmRSS) every second.
type memWatch struct {
	pid   int
	start time.Time
	st    memStats
	stopc chan struct{}
	done  chan struct{}
}

// watchMemory takes the first sample at once, then one every second,
// until stop.
func watchMemory(pid int, start time.Time) *memWatch {
	m := &memWatch{pid: pid, start: start, stopc: make(chan struct{}), done: make(chan struct{})}
	m.st.Before, _ = vmStatus(pid)
	m.st.Peak = m.st.Before
	go func() {
		defer close(m.done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-m.stopc:
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *memWatch) sample() int64 {
	rss, _ := vmStatus(m.pid)
	at := time.Since(m.start)
	m.st.Samples = append(m.st.Samples, counterSample{At: at, V: rss})
	if rss > m.st.Peak {
		m.st.Peak, m.st.PeakAt = rss, at
	}
	return rss
}

// stop takes the last sample and the high-water mark.
func (m *memWatch) stop() memStats {
	close(m.stopc)
	<-m.done
	m.st.After = m.sample()
	_, m.st.HWM = vmStatus(m.pid)
	return m.st
}

// vmStatus reads a process's resident memory and its high-water mark,
// in bytes, from /proc/<pid>/status.
func vmStatus(pid int) (rss, hwm int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	return rss, hwm
}

// readGauges reads unlabelled metrics from a Caddy's admin /metrics.
func readGauges(ctx context.Context, admin string, names []string) map[string]float64 {
	out := map[string]float64{}
	c := &http.Client{Timeout: 2 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	res, err := c.Do(req)
	if err != nil {
		return out
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && slices.Contains(names, f[0]) {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// analyzeMemory reports S10m's memory: before the load, its peak (the
// kernel's high-water mark, which catches a peak between samples), and
// after; the growth is peak minus before.
func analyzeMemory(r *runData, res *result) {
	m := r.mem
	if m == nil || m.Before == 0 {
		return
	}
	peak := max(m.Peak, m.HWM)
	x := res.Extra
	x["rss_before_mib"] = mib(m.Before)
	x["rss_peak_mib"] = mib(peak)
	x["rss_sampled_peak_mib"] = mib(m.Peak)
	x["rss_peak_at_s"] = m.PeakAt.Seconds()
	x["rss_after_mib"] = mib(m.After)
	x["rss_growth_mib"] = mib(peak - m.Before)
	x["load_s"] = r.elapsed.Seconds()
	for name, key := range map[string]string{
		"caddy_resilient_idempotency_bytes": "idempotency_bytes_mib",
		"go_memstats_heap_inuse_bytes":      "go_heap_inuse_mib",
		"go_memstats_next_gc_bytes":         "go_next_gc_mib",
	} {
		if v, ok := m.Gauges[name]; ok {
			x[key] = v / (1 << 20)
		}
	}
	if v, ok := m.Gauges["go_gc_gogc_percent"]; ok {
		x["go_gogc"] = v
	}
}
