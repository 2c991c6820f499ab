// Package redistest runs real redis-servers for tests: the fleet's tests
// and the idempotency records' test against Redis itself, not a fake of
// it, so that what they prove holds for the server that runs in
// production (Debian's redis-server package).
package redistest

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a redis-server on a loopback port, without persistence, that
// a test can kill and start again on the same port, as a crash and a
// restart would do it: it comes back empty.
type Server struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	args []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	log    *os.File
	starts int
}

// Start starts a redis-server for t, with extra arguments appended to
// its command line (say "--requirepass", "pw"), and waits until it
// answers. The server is killed when t ends. A missing redis-server
// fails t rather than skipping it: a test that cannot run must not pass.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not on PATH: install Debian's redis-server package (apt-get install -y redis-server); these tests run against a real Redis")
	}
	s := &Server{t: t, bin: bin, port: FreePort(t), dir: t.TempDir()}
	s.args = append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--loglevel", "warning",
	}, extra...)
	t.Cleanup(s.Kill)
	s.Start()
	return s
}

// FreePort returns a loopback port that nothing listens on at the time
// of the call (see FreePorts).
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreePorts returns n distinct loopback ports that nothing listens on at
// the time of the call. They are drawn below the kernel's range of
// ephemeral ports: a port from that range, once let go, may be taken
// by any outgoing connection or listener on port 0 before the process
// meant to bind it does (a Caddy starting, a redis-server restarted on
// its port after a kill), and the test fails on "address already in
// use".
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	lo := ephemeralLow()
	span := min(lo-1024, 16384)
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for try := 0; len(ports) < n; try++ {
		if try == 10000 {
			t.Fatalf("no %d free loopback ports below %d", n, lo)
		}
		p := lo - 1 - rand.IntN(span)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue // in use
		}
		held = append(held, l) // held until all are picked, so none repeats
		ports = append(ports, p)
	}
	return ports
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if lo, err := strconv.Atoi(f[0]); err == nil && lo > 2048 {
				return lo
			}
		}
	}
	return 32768
}

// Start runs the server again, on the same port, after Kill, and waits
// until it answers. It does nothing while the server runs.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	s.starts++
	// The output goes to a file, not a buffer the test reads while the
	// server writes it.
	log, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", s.starts)))
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		log.Close()
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.cmd, s.log = cmd, log
	deadline := time.Now().Add(10 * time.Second)
	for !s.answers() {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(log.Name())
			s.t.Fatalf("redis-server on port %d did not answer within 10s:\n%s", s.port, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answers reports whether the server replies to PING (NOAUTH counts: it
// is up, and asks for a password).
func (s *Server) answers() bool {
	c, err := net.DialTimeout("tcp", s.Addr(), 100*time.Millisecond)
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

// Kill stops the server by its PID, at once (SIGKILL), as a crash would.
// It does nothing when the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	_ = s.log.Close()
	s.cmd, s.log = nil, nil
}

// Port returns the server's port, the same across restarts.
func (s *Server) Port() int { return s.port }

// Addr returns the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL returns a redis:// URL of the server's database 0, without a
// password.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }
