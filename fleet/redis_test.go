package fleet

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-resilient/resilient/internal/redistest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// startRedis starts a real redis-server for t (internal/redistest): the
// fleet tests need the real thing, and without it they fail.
func startRedis(t *testing.T, extra ...string) *redistest.Server {
	t.Helper()
	return redistest.Start(t, extra...)
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) int { return redistest.FreePort(t) }

// newProcess stands for another Caddy process: a registry of its own,
// with its own instance id. Its members are closed when t ends.
func newProcess(t *testing.T) *registry {
	r := newRegistry(0)
	t.Cleanup(func() {
		r.mu.Lock()
		ms := make([]*Member, 0, len(r.members))
		for _, m := range r.members {
			ms = append(ms, m)
		}
		r.mu.Unlock()
		for _, m := range ms {
			closeNow(m)
		}
	})
	return r
}

// closeNow releases every reference to m and closes it without lingering.
func closeNow(m *Member) {
	r := m.reg
	r.mu.Lock()
	m.refs = 0
	if m.linger != nil {
		m.linger.Stop()
	}
	m.linger = time.NewTimer(time.Hour)
	m.linger.Stop()
	m.gen++
	gen := m.gen
	r.mu.Unlock()
	r.expire(m, gen)
}

// join joins r to the fleet at url under prefix and waits until the
// member is connected.
func join(t *testing.T, r *registry, url, prefix string, log *zap.Logger) *Member {
	t.Helper()
	return joinWith(t, r, Options{URL: url, Prefix: prefix}, log)
}

// joinPatient is join with a Redis timeout long enough that a busy test
// machine (the race detector, other packages' tests) never makes an
// operation fail: for tests of what the fleet shares, not of Redis
// being slow.
func joinPatient(t *testing.T, r *registry, url, prefix string, log *zap.Logger) *Member {
	t.Helper()
	return joinWith(t, r, Options{URL: url, Prefix: prefix, Timeout: 2 * time.Second}, log)
}

func joinWith(t *testing.T, r *registry, o Options, log *zap.Logger) *Member {
	t.Helper()
	m, err := r.join(o, log)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "member connected", m.Connected)
	return m
}

// waitFor polls cond until it holds, failing t after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder collects what a callback receives.
type recorder[T any] struct {
	mu  sync.Mutex
	got []T
}

func (r *recorder[T]) add(v T) {
	r.mu.Lock()
	r.got = append(r.got, v)
	r.mu.Unlock()
}

func (r *recorder[T]) all() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]T(nil), r.got...)
}

// find returns the first value received that matches, waiting up to d.
func (r *recorder[T]) find(t *testing.T, d time.Duration, what string, match func(T) bool) T {
	t.Helper()
	var found T
	waitFor(t, d, what, func() bool {
		for _, v := range r.all() {
			if match(v) {
				found = v
				return true
			}
		}
		return false
	})
	return found
}

// observed returns a logger that records everything, at debug and up.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// mentions reports whether any recorded entry, message or field, holds s.
func mentions(logs *observer.ObservedLogs, s string) string {
	for _, e := range logs.All() {
		text := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(text, s) {
			return text
		}
	}
	return ""
}

func uniquePrefix(t *testing.T) string {
	return "test-" + strings.ReplaceAll(t.Name(), "/", "-")
}
