package resilient

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// trackedBody is a client body that remembers whether it was closed.
type trackedBody struct {
	io.Reader
	closed bool
}

func (b *trackedBody) Close() error { b.closed = true; return nil }

func TestBodySourceStreamsAndReplaysTheCopyThenTheRest(t *testing.T) {
	pr, pw := io.Pipe()
	src := newBodySource(pr, -1, 1<<20, nil)
	first := src.reader(nil)
	go pw.Write([]byte("hello "))
	buf := make([]byte, 64)
	n, err := first.Read(buf)
	if err != nil || string(buf[:n]) != "hello " {
		t.Fatalf("first attempt read %q, %v: the body must stream as the client sends it", buf[:n], err)
	}
	// the attempt fails; a retry takes over before the client is done
	if !src.replayable() {
		t.Fatal("a body within max_body is not replayable")
	}
	second := src.reader(nil)
	if _, err := first.Read(buf); !errors.Is(err, errBodyMoved) {
		t.Fatalf("the given-up attempt read on: %v", err)
	}
	go func() {
		pw.Write([]byte("world"))
		pw.Close()
	}()
	got, err := io.ReadAll(second)
	if err != nil || string(got) != "hello world" {
		t.Fatalf("retry sent %q, %v; want the copy, then the rest", got, err)
	}
}

// gatedBody is a client body whose Read says when it began, and returns
// what is sent on data.
type gatedBody struct {
	entered chan struct{}
	data    chan string
}

func (b *gatedBody) Read(p []byte) (int, error) {
	b.entered <- struct{}{}
	s, ok := <-b.data
	if !ok {
		return 0, io.EOF
	}
	return copy(p, s), nil
}

func (b *gatedBody) Close() error { return nil }

func TestBodySourceByteReadByAGivenUpAttemptIsNotLost(t *testing.T) {
	client := &gatedBody{entered: make(chan struct{}, 1), data: make(chan string)}
	src := newBodySource(client, -1, 1<<20, nil)
	first := src.reader(nil)
	read := make(chan error)
	go func() {
		// net/http's write loop of the failed attempt, blocked on the client
		_, err := first.Read(make([]byte, 64))
		read <- err
	}()
	<-client.entered
	second := src.reader(nil) // the retry takes over while the old read waits
	client.data <- "abc"      // and the client's bytes go to the old reader
	if err := <-read; !errors.Is(err, errBodyMoved) {
		t.Fatalf("old reader: %v, want errBodyMoved", err)
	}
	close(client.data)
	got, err := io.ReadAll(second)
	if err != nil || string(got) != "abc" {
		t.Fatalf("retry sent %q, %v; the bytes the old attempt read must be in the copy", got, err)
	}
}

func TestBodySourceOverMaxBodyDropsTheCopy(t *testing.T) {
	src := newBodySource(io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), -1, 64, nil)
	r := src.reader(nil)
	got, err := io.ReadAll(r)
	if err != nil || len(got) != 100 {
		t.Fatalf("read %d bytes, %v: a body over max_body must stream whole", len(got), err)
	}
	if src.replayable() {
		t.Fatal("a body over max_body is still replayable")
	}
	if src.kept != nil {
		t.Fatalf("%d bytes still kept past max_body", len(src.kept))
	}
}

func TestBodySourceExactlyMaxBodyIsReplayable(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 4) // 64 bytes
	src := newBodySource(io.NopCloser(bytes.NewReader(body)), int64(len(body)), 64, nil)
	if _, err := io.ReadAll(src.reader(nil)); err != nil {
		t.Fatal(err)
	}
	if !src.replayable() {
		t.Fatal("a body of exactly max_body is not replayable")
	}
	for i := 0; i < 2; i++ {
		got, err := io.ReadAll(src.reader(nil))
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("replay %d: %d bytes, %v", i+1, len(got), err)
		}
	}
}

func TestBodySourceKnownLengthOverMaxBodyKeepsNothing(t *testing.T) {
	body := strings.NewReader(strings.Repeat("x", 100))
	src := newBodySource(io.NopCloser(body), 100, 64, nil)
	if !src.untouched() || !src.replayable() {
		t.Fatal("a body nobody read yet is untouched and may still go anywhere")
	}
	r := src.reader(nil)
	if _, err := r.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if src.replayable() || src.untouched() {
		t.Fatal("once read, a body known to be over max_body cannot be sent again")
	}
	if src.kept != nil {
		t.Fatal("kept a copy of a body known to be over max_body")
	}
}

func TestBodySourceClientErrorIsTheClients(t *testing.T) {
	cut := errors.New("client went away")
	pr, pw := io.Pipe()
	src := newBodySource(pr, 100, 1<<20, nil)
	go func() {
		pw.Write([]byte("part"))
		pw.CloseWithError(cut)
	}()
	_, err := io.ReadAll(src.reader(nil))
	if !errors.Is(err, cut) || !errors.Is(src.failed(), cut) {
		t.Fatalf("read error %v, failed() %v; want the client's error", err, src.failed())
	}
}

func TestBodySourceClosesTheClientsBodyOnlyWhenDone(t *testing.T) {
	client := &trackedBody{Reader: strings.NewReader("data")}
	src := newBodySource(client, 4, 1<<20, nil)
	r := src.reader(nil)
	io.ReadAll(r)
	r.Close() // net/http closes each attempt's body
	if client.closed {
		t.Fatal("closing an attempt's body closed the client's: a retry still needs it")
	}
	src.end()
	if !client.closed {
		t.Fatal("the client's body was left open after the exchange ended")
	}

	untouched := &trackedBody{Reader: strings.NewReader("data")}
	src = newBodySource(untouched, 4, 1<<20, nil)
	src.reader(nil).Close() // a dial error: net/http closes the body unread
	src.end()
	if untouched.closed {
		t.Fatal("an unread body was closed: Caddy may still send it to another upstream")
	}
}

func TestBodySourceClientWaitDoesNotCountTowardTheBounds(t *testing.T) {
	pr, pw := io.Pipe()
	var paused atomic.Int64
	src := newBodySource(pr, -1, 0, &paused)
	cancelled := make(chan error, 1)
	w := new(watchdog)
	w.init(func(cause error) { cancelled <- cause }, time.Now().Add(50*time.Millisecond), time.Time{}, time.Time{})
	defer w.stop()
	r := src.reader(w)
	go func() {
		time.Sleep(150 * time.Millisecond) // a slow client, three attempt bounds long
		pw.Write([]byte("x"))
	}()
	if _, err := r.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-cancelled:
		t.Fatalf("the attempt bound ran out (%v) while the client was sending", cause)
	default:
	}
	if d := time.Duration(paused.Load()); d < 100*time.Millisecond {
		t.Fatalf("paused %v, want the time the client took", d)
	}
	select {
	case cause := <-cancelled:
		if cause != causeAttempt {
			t.Fatalf("cause %v", cause)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the attempt bound never ran out once the client had sent")
	}
}

// The caller's deadline is an instant of the caller's: its own slow
// body does not move it, and it runs out while the body is waited for.
func TestBodySourceClientWaitDoesNotMoveTheCallersDeadline(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	var paused atomic.Int64
	src := newBodySource(pr, -1, 0, &paused)
	cancelled := make(chan error, 1)
	w := new(watchdog)
	start := time.Now()
	w.init(func(cause error) {
		cancelled <- cause
		pr.CloseWithError(cause) // as net/http gives up on the body
	}, time.Time{}, start.Add(time.Hour), start.Add(50*time.Millisecond))
	defer w.stop()
	go src.reader(w).Read(make([]byte, 1)) // the client sends nothing
	select {
	case cause := <-cancelled:
		if cause != causeTotal {
			t.Fatalf("cause %v, want the total bound", cause)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("the caller's 50ms ran out after %v", took)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the caller's deadline never ran out while its body was waited for")
	}
}

func TestBodySourceCopyNeverHoldsMoreThanMaxBody(t *testing.T) {
	const limit = 100 << 10
	body := bytes.Repeat([]byte("x"), limit)
	// unknown length, read in odd pieces
	src := newBodySource(io.NopCloser(io.MultiReader(bytes.NewReader(body))), -1, limit, nil)
	r := src.reader(nil)
	buf := make([]byte, 3000)
	for {
		_, err := r.Read(buf)
		if err != nil {
			break
		}
		if c := cap(src.kept); c > limit {
			t.Fatalf("the copy holds %d bytes of memory, over max_body %d", c, limit)
		}
	}
	if !src.replayable() || len(src.kept) != limit {
		t.Fatalf("kept %d bytes, replayable %v", len(src.kept), src.replayable())
	}
}

// net/http sends a body of known length as that many bytes, then reads
// once more to see that nothing follows; an upstream that has every
// byte may answer before that last read. Once its length was read the
// body is whole: the idempotency fingerprint then needs no drain, which
// would take the body from the attempt, fail net/http's last read and
// make it drop the connection the answer streams on.
func TestBodySourceKnownLengthIsWholeOnceRead(t *testing.T) {
	src := newBodySource(&trackedBody{Reader: strings.NewReader("0123456789")}, 10, 1<<20, nil)
	r := src.reader(nil)
	if n, err := io.ReadFull(io.LimitReader(r, 10), make([]byte, 10)); n != 10 || err != nil {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	// what keyFingerprint does when the answer came
	if !src.complete() {
		src.drainHash(1 << 20)
	}
	if n, err := r.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("net/http's read past the known length got %d bytes, %v; want io.EOF", n, err)
	}

	// a body of unknown length is whole only at its end
	pr, pw := io.Pipe()
	src = newBodySource(pr, -1, 1<<20, nil)
	go pw.Write([]byte("0123456789"))
	if n, err := src.reader(nil).Read(make([]byte, 10)); n != 10 || err != nil {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if src.complete() {
		t.Fatal("a body of unknown length is whole before its end")
	}
	pw.Close()
}
