package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A reload that changes the timeout joins the fleet with a new member
// and releases the old one. When the old one closes, the instance is
// still in the fleet: its entry in the member set and its
// fleet_connected series stay, the new member's.
func TestReloadNewTimeoutKeepsInstance(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	r := newProcess(t)
	old, err := r.join(Options{URL: rs.URL(), Prefix: prefix, Timeout: 50 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "old member connected", old.Connected)
	next, err := r.join(Options{URL: rs.URL(), Prefix: prefix, Timeout: 80 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if next == old {
		t.Fatal("another timeout got the same member")
	}
	waitFor(t, 3*time.Second, "new member connected", next.Connected)

	old.Release() // the old config stops; r lingers 0
	waitFor(t, 2*time.Second, "old member closed, and its client", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.members) == 1 && len(r.clients) == 1
	})
	// right away, before the new member's next heartbeat could put it back
	if _, err := next.rdb.ZScore(context.Background(), next.names.members, r.id).Result(); err != nil {
		t.Errorf("the instance's entry in the member set after its old member closed: %v", err)
	}
	if v, ok := gaugeValue(t, connectedGauge, next.show, prefix); !ok || v != 1 {
		t.Errorf("fleet_connected of the new member after the old one closed: %v (present: %v), want 1", v, ok)
	}

	closeNow(next) // the last member of the fleet: its series go
	if _, ok := gaugeValue(t, connectedGauge, next.show, prefix); ok {
		t.Error("fleet_connected still shown once the instance left the fleet")
	}
}

// gaugeValue returns the sample of g with the labels redis and prefix,
// without making one.
func gaugeValue(t *testing.T, g *prometheus.GaugeVec, redis, prefix string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(g)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["redis"] == redis && labels["prefix"] == prefix {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}
