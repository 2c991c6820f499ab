package fleet

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// redisServer is a real redis-server on a loopback port, without
// persistence, that a test can kill and start again on the same port.
type redisServer struct {
	t    *testing.T
	bin  string
	port int
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
	out *bytes.Buffer
}

// startRedis starts a redis-server for t, stopped by PID when t ends.
// The fleet tests need the real thing: without it they fail.
func startRedis(t *testing.T, extra ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not on PATH: install Debian's redis-server package (apt-get install -y redis-server); the fleet tests run against a real Redis")
	}
	s := &redisServer{t: t, bin: bin, port: freePort(t)}
	s.args = append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(),
		"--daemonize", "no", "--loglevel", "warning",
	}, extra...)
	s.start()
	t.Cleanup(s.kill)
	return s
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs redis-server and waits until it answers.
func (s *redisServer) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out = new(bytes.Buffer)
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !s.answers() {
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d did not answer within 10s:\n%s", s.port, s.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answers reports whether the server replies to PING (NOAUTH counts: it
// is up, and asks for a password).
func (s *redisServer) answers() bool {
	c, err := net.DialTimeout("tcp", s.addr(), 100*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH"))
}

// kill stops the server by its PID, at once, as a crash would.
func (s *redisServer) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

func (s *redisServer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

func (s *redisServer) url() string { return "redis://" + s.addr() + "/0" }

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
	m, err := r.join(Options{URL: url, Prefix: prefix}, log)
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
