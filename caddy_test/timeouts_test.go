package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestConnectErrorIsRetriedThen502(t *testing.T) {
	g := loadGateway(t, proxySite(closedPort(t), `transport resilient`))
	res, _ := g.get("/refused")
	expect(t, res, http.StatusBadGateway, "connect_error")
	if res.Header.Get("X-Attempts") != "3" {
		t.Errorf("attempts = %q, want 3 (refused connections are retried)", res.Header.Get("X-Attempts"))
	}
	e := g.lastEntry()
	if e.Outcome != "connect_error" || len(e.Tries) != 3 {
		t.Errorf("log entry: outcome %q with %d tries, want connect_error with 3", e.Outcome, len(e.Tries))
	}
}

// fullBacklog returns the address of a listening socket whose accept
// queue is full, so a new connection attempt hangs in SYN_SENT.
func fullBacklog(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; i < 16; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr // the queue is full: connects now hang
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill the accept queue of a loopback listener on this kernel")
	return ""
}

func TestConnectTimeout(t *testing.T) {
	addr := fullBacklog(t)
	g := loadGateway(t, proxySite(addr, `transport resilient {
			timeouts {
				connect 200ms
			}
			retry off
		}`))
	start := time.Now()
	res, _ := g.get("/")
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, log: %s", res.StatusCode, g.lastEntry().raw)
	}
	expect(t, res, http.StatusGatewayTimeout, "connect_timeout")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v; the connect timeout is 200ms", d)
	}
}

func TestTLSTimeout(t *testing.T) {
	s := startSilent(t, true)
	g := loadGateway(t, proxySite("https://"+s.Addr().String(), `transport resilient {
			timeouts {
				tls 200ms
			}
			retry off
		}`))
	res, _ := g.get("/")
	expect(t, res, http.StatusGatewayTimeout, "tls_timeout")
}

func TestTLSError(t *testing.T) {
	// a TLS upstream whose certificate nobody trusts
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	g := loadGateway(t, proxySite("https://"+up.Listener.Addr().String(), `transport resilient {
			retry off
		}`))
	res, _ := g.get("/")
	expect(t, res, http.StatusBadGateway, "tls_error")
}

func TestTLSUpstream(t *testing.T) {
	var sawTLS bool
	var mu sync.Mutex
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sawTLS = r.TLS != nil
		mu.Unlock()
		io.WriteString(w, "secure")
	}))
	defer up.Close()
	g := loadGateway(t, proxySite("https://"+up.Listener.Addr().String(), `transport resilient {
			tls_insecure_skip_verify
		}`))
	res, body := g.get("/")
	expect(t, res, http.StatusOK, "ok")
	mu.Lock()
	defer mu.Unlock()
	if body != "secure" || !sawTLS {
		t.Errorf("body %q, upstream saw TLS: %v", body, sawTLS)
	}
}

func TestWriteTimeout(t *testing.T) {
	// the upstream accepts the connection and reads nothing, so writing a
	// large body blocks once the socket buffers are full
	s := startSilent(t, false)
	g := loadGateway(t, proxySite(s.Addr().String(), `transport resilient {
			timeouts {
				write 300ms
			}
			retry off
		}`))
	body := strings.NewReader(strings.Repeat("x", 64<<20))
	req, _ := http.NewRequest(http.MethodPut, "http://localhost:9080/upload", body)
	res, err := g.Client.Do(req)
	if err != nil {
		// the gateway may answer before it read the whole upload; then
		// the client can see its write fail instead of the answer
		e := g.lastEntry()
		if e.Outcome != "write_timeout" {
			t.Fatalf("client error %v; logged outcome %q, want write_timeout", err, e.Outcome)
		}
		return
	}
	res.Body.Close()
	expect(t, res, http.StatusGatewayTimeout, "write_timeout")
}

func TestReadTimeoutWaitingForHeaders(t *testing.T) {
	s := startSilent(t, true)
	g := loadGateway(t, proxySite(s.Addr().String(), `transport resilient {
			timeouts {
				read 200ms
			}
			retry off
		}`))
	res, _ := g.get("/")
	expect(t, res, http.StatusGatewayTimeout, "read_timeout")
	if n := s.read.Load(); n == 0 {
		t.Error("the upstream read nothing: the request was never written")
	}
}

func TestReadTimeoutIsNotRetriedByDefault(t *testing.T) {
	s := startSilent(t, true)
	g := loadGateway(t, proxySite(s.Addr().String(), `transport resilient {
			timeouts {
				read 100ms
			}
		}`))
	res, _ := g.get("/")
	expect(t, res, http.StatusGatewayTimeout, "read_timeout")
	if n := s.conns.Load(); n != 1 {
		t.Errorf("upstream got %d connections, want 1: `timeout` is not in the default retry conditions", n)
	}
}

func TestReadTimeoutIdleGapWhileStreaming(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "first part;")
		w.(http.Flusher).Flush()
		select { // then stall
		case <-release:
		case <-r.Context().Done():
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			timeouts {
				read 300ms
			}
		}`))
	res, err := g.Client.Get("http://localhost:9080/stall")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Fatalf("body read completed (%q); want it cut by the idle read timeout", body)
	}
	if string(body) != "first part;" {
		t.Errorf("got %q before the cut, want the first part", body)
	}
	if e := g.lastEntry(); e.Outcome != "read_timeout" || e.Status != 200 {
		t.Errorf("logged outcome %q status %d, want read_timeout 200", e.Outcome, e.Status)
	}
}

func TestAttemptTimeout(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			timeouts {
				attempt 200ms
			}
			retry {
				on timeout
			}
		}`))
	res, _ := g.get("/")
	expect(t, res, http.StatusGatewayTimeout, "attempt_timeout")
	if got := up.count.Load(); got != 3 {
		t.Errorf("upstream got %d requests, want 3 (a GET retried on timeout)", got)
	}
}

func TestTotalTimeout(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			timeouts {
				attempt 250ms
				total 400ms
			}
			retry {
				on timeout
				backoff 10ms 10ms
			}
		}`))
	start := time.Now()
	res, _ := g.get("/")
	took := time.Since(start)
	expect(t, res, http.StatusGatewayTimeout, "total_timeout")
	if took > 2*time.Second {
		t.Errorf("took %v, the total timeout is 400ms", took)
	}
	if got := up.count.Load(); got != 2 {
		t.Errorf("upstream got %d requests, want 2 (the second cut by the total)", got)
	}
}

func TestPoolTimeout(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "slow")
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			pool {
				max_conns 1
			}
			timeouts {
				pool 100ms
			}
		}`))
	first := make(chan *http.Response, 1)
	go func() {
		res, err := g.Client.Get("http://localhost:9080/first")
		if err != nil {
			first <- nil
			return
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		first <- res
	}()
	<-started
	res, _ := g.get("/second")
	expect(t, res, http.StatusServiceUnavailable, "pool_timeout")
	if res.Header.Get("X-Retry-After") == "" {
		t.Error("no {http.resilient.retry_after} on pool_timeout")
	}
	if got := up.count.Load(); got != 1 {
		t.Errorf("upstream got %d requests; the second must never reach it", got)
	}
	close(release)
	if r := <-first; r == nil || r.StatusCode != 200 {
		t.Fatalf("the first request failed: %v", r)
	}
	// the slot is free again
	res, _ = g.get("/third")
	expect(t, res, http.StatusOK, "ok")
}

func TestClientCancelIs499AndCanceled(t *testing.T) {
	got := make(chan struct{}, 1)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		got <- struct{}{}
		<-r.Context().Done()
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient`))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost:9080/gone", nil)
	go func() {
		<-got
		cancel()
	}()
	if _, err := g.Client.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v, want canceled", err)
	}
	e := g.lastEntry()
	if e.Outcome != "canceled" || e.Status != 499 {
		t.Errorf("logged outcome %q status %d, want canceled 499", e.Outcome, e.Status)
	}
	if up.count.Load() != 1 {
		t.Errorf("upstream got %d requests; a canceled request is not retried", up.count.Load())
	}
}

func TestStreamingIsNotBuffered(t *testing.T) {
	next := make(chan struct{})
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(5 * time.Second):
				return
			}
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient`))
	res, err := g.Client.Get("http://localhost:9080/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	for i := 0; i < 3; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := fmt.Sprintf("data: %d\n", i); line != want {
			t.Fatalf("event %d: got %q, want %q", i, line, want)
		}
		br.ReadString('\n')
		// the upstream sends the next event only after we saw this one
		next <- struct{}{}
	}
}

func TestWebsocketPassThrough(t *testing.T) {
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw) // echo
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient`))
	conn, err := net.DialTimeout("tcp", "127.0.0.1:9080", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: localhost:9080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", res.StatusCode)
	}
	for _, msg := range []string{"ping", "pong!"} {
		io.WriteString(conn, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo of %q: got %q, %v", msg, buf, err)
		}
	}
	if e := g.lastEntry(); e.Outcome != "ok" || e.Status != 101 || e.Attempts != 1 || e.Path != "/ws" {
		t.Errorf("the upgrade was logged as %s", e.raw)
	}
}

func TestLargeDownloadStreamsIntact(t *testing.T) {
	const size = 32 << 20
	chunk := []byte(strings.Repeat("0123456789abcdef", 4096)) // 64KiB
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	g := loadGateway(t, proxySite(up.addr, `transport resilient {
			timeouts {
				read 2s
			}
		}`))
	res, err := g.Client.Get("http://localhost:9080/big")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	buf := make([]byte, len(chunk))
	total := 0
	for {
		n, err := io.ReadFull(res.Body, buf)
		total += n
		if n > 0 && string(buf[:n]) != string(chunk[:n]) {
			t.Fatalf("corrupted data at offset %d", total-n)
		}
		if err != nil {
			break
		}
	}
	if total != size {
		t.Fatalf("got %d bytes, want %d", total, size)
	}
	if e := g.lastEntry(); e.Outcome != "ok" {
		t.Errorf("logged outcome %q", e.Outcome)
	}
}
