package integration

// What a keyed request (SPEC §13, `idempotency`) whose client gives up
// leaves behind: a key kept for its repeats when bytes of it reached the
// upstream, released when none did, and every repeat answered truthfully
// (SPEC §6, executed; one problem schema), never sent a second time.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// cutCounter is an upstream that counts the requests that reached it,
// those whose body it read whole and those whose body was cut.
type cutCounter struct {
	*upstream
	whole, cut atomic.Int64
}

func startCutCounter(t *testing.T) *cutCounter {
	t.Helper()
	c := &cutCounter{}
	c.upstream = startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			c.cut.Add(1)
			return
		}
		c.whole.Add(1)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "label for "+r.URL.Path)
	})
	return c
}

// rawKeyed opens a connection to the gateway and writes the head of a
// keyed POST to path announcing length bytes of body, then sent of
// them. extra are more header lines.
func rawKeyed(t *testing.T, path, key string, length int, sent string, extra ...string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: localhost:9080\r\nIdempotency-Key: %s\r\n", path, key)
	if length >= 0 {
		head += fmt.Sprintf("Content-Length: %d\r\n", length)
	}
	for _, h := range extra {
		head += h + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n"+sent); err != nil {
		t.Fatal(err)
	}
	return c
}

// entryAfter waits for the first log entry past the first mark ones
// whose path is path, and returns it.
func entryAfter(t *testing.T, g *gateway, mark int, path string) logEntry {
	t.Helper()
	var e logEntry
	poll(t, 5*time.Second, "the log entry of "+path, func() bool {
		es := g.entries(0)
		for i := mark; i < len(es); i++ {
			if es[i].Path == path {
				e = es[i]
				return true
			}
		}
		return false
	})
	return e
}

// SPEC §4 3a: a request whose client leaves while it waits for a
// rate-limit token gives its place back, nothing sent; §13: `canceled`
// before any byte was written releases the key. A keyed POST without a
// body waits for a token and its client leaves (Go's server sees that at
// once): it must not be sent when the token comes, an execution nobody
// asked for any more, though a keyed request once sent is carried to its
// answer whatever its client does.
func TestKeyedBodylessClientGoneWhileWaitingForTokenIsNotSent(t *testing.T) {
	up := startCutCounter(t)
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nrate_limit {\n\trate 1/s\n\tburst 1\n\tmax_wait 5s\n}\nidempotency"))
	if res, _ := g.get("/token"); res.StatusCode != http.StatusCreated {
		t.Fatalf("taking the token: %d", res.StatusCode)
	}
	mark := len(g.entries(0))
	c := rawKeyed(t, "/labels", "bodyless-queued", 0, "")
	time.Sleep(200 * time.Millisecond)
	c.Close()
	e := entryAfter(t, g, mark, "/labels")
	t.Logf("the abandoned request: %s", e.raw)
	if n := up.count.Load(); n != 1 {
		t.Errorf("the upstream got the POST whose client left while it waited for a token (%d requests in all, want the token taker's only)", n)
	}
	if e.Outcome != "canceled" {
		t.Errorf("the request whose client left while it waited: outcome %q, want canceled", e.Outcome)
	}
}

// SPEC §13: a keyed request that offers an upgrade is sent as it is;
// its client leaving while the connection to the upstream is still
// being dialled puts no byte of it on the wire, so the key is released
// (canceled before any byte was written), and the repeat is sent, not
// told the first may have executed.
func TestKeyedUpgradeOfferCanceledDuringDialReleasesTheKey(t *testing.T) {
	addr := fullBacklog(t)
	g := loadGateway(t, verdictSite(addr, "", "breaker off\ntimeouts {\n\tconnect 5s\n}\nidempotency"))
	mark := len(g.entries(0))
	c := rawKeyed(t, "/labels", "upgrade-dialling", 0, "", "Connection: Upgrade", "Upgrade: foo/1")
	time.Sleep(300 * time.Millisecond) // dialling a listener whose queue is full
	c.Close()
	e := entryAfter(t, g, mark, "/labels")
	t.Logf("the abandoned request: %s", e.raw)

	// the repeat: still nothing listens; what matters is the key
	req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/labels", nil)
	req.Header.Set("Idempotency-Key", "upgrade-dialling")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "foo/1")
	done := make(chan struct{})
	var v verdict
	var got string
	go func() {
		defer close(done)
		cl := &http.Client{Timeout: 2 * time.Second}
		res, err := cl.Do(req)
		if err != nil {
			got = err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		v, got = verdictOf(res), string(b)
	}()
	<-done
	t.Logf("the repeat: %+v %s", v, got)
	if v.idem == "replayed" || v.idem == "conflict" || v.executed == "maybe" {
		t.Errorf("the repeat of an upgrade offer whose client left during the dial (nothing written): %+v %s; want the key released and the repeat sent", v, got)
	}
}

// SPEC §13 "Repeat while in flight": a repeat waits for the first's
// answer. When the first's client leaves in the middle of its upload,
// the waiting repeat is answered at once: not sent (the upstream got the
// first, cut), told 409 executed maybe without Retry-After (the key is
// used, SPEC: a used key's 409 has no Retry-After), in the one problem
// schema.
func TestCutUploadAWaitingRepeatIsAnsweredAtOnce(t *testing.T) {
	up := startCutCounter(t)
	loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	body := strings.Repeat("parcel. ", 64<<10) // 512 KiB
	c := rawKeyed(t, "/labels", "cut-while-waited", len(body), body[:100<<10])
	poll(t, 3*time.Second, "the first at the upstream", func() bool { return up.count.Load() == 1 })

	type answer struct {
		res  *http.Response
		body string
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:9080/labels", strings.NewReader(body))
		req.Header.Set("Idempotency-Key", "cut-while-waited")
		cl := &http.Client{Timeout: 8 * time.Second}
		res, err := cl.Do(req)
		if err != nil {
			done <- answer{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		done <- answer{res, string(b), err}
	}()
	time.Sleep(300 * time.Millisecond) // the repeat waits for the first
	select {
	case a := <-done:
		t.Fatalf("the repeat did not wait for the first in flight: %+v %v", a.res, a.err)
	default:
	}
	c.Close()
	var a answer
	select {
	case a = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting repeat hangs after the first's client left")
	}
	if a.err != nil {
		t.Fatalf("the waiting repeat: %v", a.err)
	}
	v := verdictOf(a.res)
	t.Logf("the waiting repeat: %+v %s", v, a.body)
	if n := up.count.Load(); n != 1 {
		t.Fatalf("the upstream got the keyed POST %d times", n)
	}
	if a.res.StatusCode != http.StatusConflict || v.executed != "maybe" || v.idem != "conflict" || v.outcome != "key_conflict" {
		t.Errorf("the waiting repeat: %+v, want 409 key_conflict, executed maybe, idempotency conflict", v)
	}
	if ra := a.res.Header.Get("Retry-After"); ra != "" {
		t.Errorf("the waiting repeat of a used key carries Retry-After %q", ra)
	}
	p := problemOf(t, a.res, a.body)
	if p["executed"] != "maybe" || p["retry_after"] != nil {
		t.Errorf("the problem: %s", a.body)
	}
}

// The first's own log entry and the record (SPEC §6, §7, §13): a keyed
// upload cut by its client once bytes of it went out is `canceled`, its
// idempotency verdict `new` (its record is kept), its try says it may
// have executed; chunked, and after Expect: 100-continue, as with a
// Content-Length.
func TestCutUploadVariantsKeepTheKey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		length int
		extra  []string
		sent   string
	}{
		{"content-length", 512 << 10, nil, strings.Repeat("p", 100<<10)},
		{"chunked", -1, []string{"Transfer-Encoding: chunked"}, fmt.Sprintf("%x\r\n%s\r\n", 100<<10, strings.Repeat("p", 100<<10))},
		{"expect-continue", 512 << 10, []string{"Expect: 100-continue"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startCutCounter(t)
			g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
			mark := len(g.entries(0))
			key := "cut-" + tc.name
			c := rawKeyed(t, "/labels", key, tc.length, tc.sent, tc.extra...)
			if tc.sent == "" {
				// waits for 100 Continue, then sends part of its body
				buf := make([]byte, 64)
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, err := c.Read(buf)
				if err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 100") {
					t.Fatalf("no 100 Continue: %q %v", buf[:n], err)
				}
				io.WriteString(c, strings.Repeat("p", 100<<10))
			}
			poll(t, 3*time.Second, "the first at the upstream", func() bool { return up.count.Load() == 1 })
			time.Sleep(50 * time.Millisecond)
			c.Close()
			first := entryAfter(t, g, mark, "/labels")
			t.Logf("the first: %s", first.raw)
			if first.Outcome != "canceled" || !strings.Contains(first.raw, `"idempotency":"new"`) {
				t.Errorf("the first's entry: %s; want canceled, idempotency new", first.raw)
			}
			res, got := post(t, g, "/labels", strings.Repeat("p", 512<<10), "Idempotency-Key", key)
			v := verdictOf(res)
			t.Logf("the repeat: %+v %s", v, got)
			if n := up.count.Load(); n != 1 {
				t.Fatalf("the upstream got the keyed POST %d times", n)
			}
			if res.StatusCode != http.StatusConflict || v.executed != "maybe" {
				t.Errorf("the repeat: %+v, want 409 executed maybe", v)
			}
			if res.Header.Get("Retry-After") != "" {
				t.Errorf("409 for a used key with Retry-After %q", res.Header.Get("Retry-After"))
			}
			problemOf(t, res, got)
		})
	}
}

// SPEC §13: the fingerprint covers the first 8 MiB of a body, and that
// there is more. A keyed upload cut by its client past 8 MiB has a
// whole fingerprint: a repeat of the same request gets the first's
// record as a replay, 502 executed maybe, not sent; one that differs in
// the first 8 MiB is a mismatch.
func TestCutUploadPastTheFingerprint(t *testing.T) {
	up := startCutCounter(t)
	g := loadGateway(t, verdictSite(up.addr, "", "breaker off\nidempotency"))
	body := strings.Repeat("0123456789abcdef", 10<<16) // 10 MiB
	mark := len(g.entries(0))
	c := rawKeyed(t, "/uploads", "cut-past-8MiB", len(body), "")
	go io.WriteString(c, body[:9<<20])
	poll(t, 3*time.Second, "the first at the upstream", func() bool { return up.count.Load() == 1 })
	// all of the 9 MiB through the gateway: the entry comes once it ends
	time.Sleep(time.Second)
	c.Close()
	first := entryAfter(t, g, mark, "/uploads")
	t.Logf("the first: %s", first.raw)

	res, got := post(t, g, "/uploads", body, "Idempotency-Key", "cut-past-8MiB")
	v := verdictOf(res)
	t.Logf("the repeat: %+v %s", v, got)
	if n := up.count.Load(); n != 1 {
		t.Fatalf("the upstream got the keyed POST %d times", n)
	}
	if res.StatusCode != http.StatusBadGateway || v.executed != "maybe" || res.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the repeat of an upload cut past 8 MiB: %+v; want the record's 502 replayed, executed maybe", v)
	}
	problemOf(t, res, got)

	other := "X" + body[1:]
	res, got = post(t, g, "/uploads", other, "Idempotency-Key", "cut-past-8MiB")
	if v := verdictOf(res); res.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("another body with the key: %+v %s, want 422", v, got)
	}
}

// SPEC §13, Fleet: records live in Redis too. A keyed upload cut by its
// client once bytes of it went out keeps its record in the fleet's
// Redis as a completed record (expiring with the ttl, not a claim's
// short lease), so that a repeat on any instance is refused, not sent.
func TestCutUploadFleetKeepsTheKey(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not on PATH")
	}
	rl := freshLoopback(t)
	port := rl.Addr().(*net.TCPAddr).Port
	rl.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	t.Cleanup(func() { rdb.Close() })
	poll(t, 5*time.Second, "redis-server", func() bool { return rdb.Ping(context.Background()).Err() == nil })

	up := startCutCounter(t)
	g := loadGateway(t, verdictSite(up.addr, "", fmt.Sprintf("breaker off\nfleet {\n\tredis redis://127.0.0.1:%d/0\n\tprefix rev4\n}\nidempotency", port)))
	body := strings.Repeat("parcel. ", 64<<10)
	mark := len(g.entries(0))
	c := rawKeyed(t, "/labels", "fleet-cut", len(body), body[:100<<10])
	poll(t, 3*time.Second, "the first at the upstream", func() bool { return up.count.Load() == 1 })
	c.Close()
	first := entryAfter(t, g, mark, "/labels")
	t.Logf("the first: %s", first.raw)

	var names []string
	poll(t, 3*time.Second, "the record in redis", func() bool {
		names, _ = rdb.Keys(context.Background(), "rev4:idem:*").Result()
		return len(names) == 1
	})
	ttl, err := rdb.PTTL(context.Background(), names[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < time.Hour {
		t.Errorf("the record of the cut upload in redis expires in %s: a claim's lease, not a completed record", ttl)
	}
	res, got := post(t, g, "/labels", body, "Idempotency-Key", "fleet-cut")
	v := verdictOf(res)
	t.Logf("the repeat: %+v %s", v, got)
	if n := up.count.Load(); n != 1 {
		t.Fatalf("the upstream got the keyed POST %d times", n)
	}
	if res.StatusCode != http.StatusConflict || v.executed != "maybe" {
		t.Errorf("the repeat: %+v, want 409 executed maybe", v)
	}
}
