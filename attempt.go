package resilient

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"time"
)

// attemptTrace follows one attempt through its phases with
// net/http/httptrace: it moves the watchdog from phase to phase, times
// the phases for the log, and knows whether any byte of the request
// reached the socket.
type attemptTrace struct {
	w            *watchdog
	write, read  time.Duration
	start        time.Time
	h2c          bool // plain connections speak HTTP/2
	flags        atomic.Uint32
	conn         atomic.Pointer[countingConn]
	tlsConn      atomic.Pointer[tls.Conn] // conn's TLS layer, if any
	baseWritten  atomic.Int64
	connectNanos atomic.Int64 // TCP connect
	tlsNanos     atomic.Int64
	gotConnNanos atomic.Int64 // since start
	wroteNanos   atomic.Int64 // since start
	headersNanos atomic.Int64 // since start
	tlsStartAt   atomic.Int64
	connStartAt  atomic.Int64
}

const (
	flagGotConn uint32 = 1 << iota
	flagInTLS
	flagWroteRequest
	flagReused
	flagDialTimeout
	flagResent
)

func (a *attemptTrace) set(f uint32)                        { a.flags.Or(f) }
func (a *attemptTrace) has(f uint32) bool                   { return a.flags.Load()&f != 0 }
func (a *attemptTrace) gotConn() bool                       { return a.has(flagGotConn) }
func (a *attemptTrace) inTLS() bool                         { return a.has(flagInTLS) }
func (a *attemptTrace) since() int64                        { return int64(time.Since(a.start)) }
func (a *attemptTrace) phase(n *atomic.Int64) time.Duration { return time.Duration(n.Load()) }

// errResent is the cause an attempt is canceled with when net/http
// set out to send the request again on another connection after the
// first one had carried it: that would be a delivery no retry rule
// decided on, so it is stopped, and the attempt ends as a reset.
var errResent = errors.New("connection closed after the request was sent")

func (a *attemptTrace) clientTrace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		DNSDone: func(info httptrace.DNSDoneInfo) {
			if info.Err != nil && isTimeout(info.Err) {
				a.set(flagDialTimeout)
			}
		},
		ConnectStart: func(string, string) {
			a.connStartAt.CompareAndSwap(0, a.since())
		},
		ConnectDone: func(_, _ string, err error) {
			if err == nil {
				a.connectNanos.Store(a.since() - a.connStartAt.Load())
			} else if isTimeout(err) {
				// Caddy's DialError hides the cause from errors.As
				a.set(flagDialTimeout)
			}
		},
		TLSHandshakeStart: func() {
			a.tlsStartAt.Store(a.since())
			a.set(flagInTLS)
		},
		TLSHandshakeDone: func(_ tls.ConnectionState, err error) {
			if err == nil {
				a.tlsNanos.Store(a.since() - a.tlsStartAt.Load())
				a.flags.And(^flagInTLS)
			}
		},
		GotConn:      a.onGotConn,
		WroteRequest: a.onWroteRequest,
	}
}

func (a *attemptTrace) onGotConn(info httptrace.GotConnInfo) {
	cc := unwrapCountingConn(info.Conn)
	if a.gotConn() && a.resending() {
		// net/http's own retry of a request that already went out on a
		// reused HTTP/1 connection: refuse it before it writes a byte
		a.set(flagResent)
		if cc != nil {
			cc.refuse()
		}
		a.w.abort(errResent)
		return
	}
	a.gotConnNanos.Store(a.since())
	if cc != nil {
		a.baseWritten.Store(cc.written.Load())
		a.conn.Store(cc)
		tc, _ := info.Conn.(*tls.Conn)
		a.tlsConn.Store(tc)
	}
	f := flagGotConn
	if info.Reused {
		f |= flagReused
	}
	a.flags.And(^flagInTLS)
	a.set(f)
	a.w.enterBeforeHeaders(causeWrite, a.write)
}

// resending reports whether a second connection for this attempt would
// carry the request again: the first was an HTTP/1 connection that got
// bytes of it. HTTP/2 retries only streams the server refused or never
// saw (REFUSED_STREAM, GOAWAY), and a connection that got nothing of the
// request leaves nothing to duplicate.
func (a *attemptTrace) resending() bool {
	cc := a.conn.Load()
	if cc == nil || cc.written.Load() == a.baseWritten.Load() {
		return false
	}
	if tc := a.tlsConn.Load(); tc != nil {
		return tc.ConnectionState().NegotiatedProtocol != "h2"
	}
	return !a.h2c
}

func (a *attemptTrace) onWroteRequest(info httptrace.WroteRequestInfo) {
	a.wroteNanos.Store(a.since())
	a.set(flagWroteRequest)
	if info.Err == nil {
		// from here to the final response headers: interim 1xx answers
		// do not end this phase
		a.w.enterBeforeHeaders(causeRead, a.read)
	}
}

// headers notes that the final response headers arrived.
func (a *attemptTrace) headers() {
	a.headersNanos.Store(a.since())
	a.w.headersDone()
}

// neverSent reports whether the attempt provably put no byte of the
// request on the wire: it never got a connection, or the connection it
// got saw no write from it. Errors that say so on their own (HTTP/2
// REFUSED_STREAM) count too.
func (a *attemptTrace) neverSent(err error) bool {
	if a.has(flagResent) {
		return false
	}
	if !a.gotConn() {
		return true
	}
	if err != nil && strings.Contains(err.Error(), "REFUSED_STREAM") {
		return true
	}
	cc := a.conn.Load()
	return cc != nil && cc.written.Load() == a.baseWritten.Load()
}

// phases returns the per-phase timing of the attempt for the log.
func (a *attemptTrace) phases() phaseTimes {
	p := phaseTimes{
		connect: a.phase(&a.connectNanos),
		tls:     a.phase(&a.tlsNanos),
	}
	got, wrote, hdrs := a.gotConnNanos.Load(), a.wroteNanos.Load(), a.headersNanos.Load()
	if got > 0 && wrote >= got {
		p.write = time.Duration(wrote - got)
	}
	if wrote > 0 && hdrs >= wrote {
		p.wait = time.Duration(hdrs - wrote)
	}
	return p
}

// phaseTimes is how long each phase of an attempt took.
type phaseTimes struct {
	connect, tls, write, wait time.Duration
}

// countingConn counts the bytes written to an upstream connection, so an
// attempt can tell whether any of its request left.
type countingConn struct {
	net.Conn
	written atomic.Int64
	refused atomic.Bool
}

func newCountingConn(c net.Conn) *countingConn { return &countingConn{Conn: c} }

func (c *countingConn) Write(b []byte) (int, error) {
	if c.refused.Load() {
		return 0, errResent
	}
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// refuse makes the connection refuse every write from now on, and
// closes it.
func (c *countingConn) refuse() {
	c.refused.Store(true)
	_ = c.Conn.Close()
}

// CloseWrite half-closes the connection when the underlying one can,
// which Caddy uses for upgraded (websocket) connections.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func unwrapCountingConn(c net.Conn) *countingConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	cc, _ := c.(*countingConn)
	return cc
}

// attemptBody wraps the body of the response an attempt returned. It
// enforces the read timeout as the longest silence while the body
// streams, notices a body the upstream cut short, and finishes the
// request (slot, log, placeholders) once the body is closed.
//
// The silence is watched lazily: Read only notes when it started, and a
// timer that wakes once per read timeout checks whether the read in
// progress has gone on too long. Time spent waiting for the client (when
// nobody is reading) never counts.
type attemptBody struct {
	rc     io.ReadCloser
	w      *watchdog
	read   time.Duration
	cancel context.CancelCauseFunc
	client context.Context // the client's request: its end is no cut
	done   func(end Outcome)

	timer    *time.Timer
	reading  atomic.Int64 // when the Read in progress began (unix nanos); 0 between reads
	timedOut atomic.Bool
	cut      atomic.Bool // a read failed on the upstream's side
	closed   atomic.Bool
}

func newAttemptBody(rc io.ReadCloser, at *attemptResult, read time.Duration, client context.Context, done func(Outcome)) *attemptBody {
	b := &attemptBody{rc: rc, w: at.w, read: read, cancel: at.cancel, client: client, done: done}
	if read > 0 {
		b.timer = time.AfterFunc(read, b.check)
	}
	return b
}

func (b *attemptBody) Read(p []byte) (int, error) {
	if b.read > 0 {
		b.reading.Store(time.Now().UnixNano())
	}
	n, err := b.rc.Read(p)
	if b.read > 0 {
		b.reading.Store(0)
	}
	if err != nil && err != io.EOF {
		switch {
		case b.timedOut.Load():
			err = &Error{Outcome: OutcomeReadTimeout, Err: err}
		case b.client.Err() == nil:
			// short of its Content-Length, a broken chunk, a reset:
			// the upstream cut its answer
			b.cut.Store(true)
		}
	}
	return n, err
}

// check runs on the timer: it cuts a read that has waited longer than
// the read timeout, or looks again later.
func (b *attemptBody) check() {
	if b.closed.Load() {
		return
	}
	began := b.reading.Load()
	if began == 0 {
		b.timer.Reset(b.read)
		return
	}
	if left := time.Duration(began + int64(b.read) - time.Now().UnixNano()); left > 0 {
		b.timer.Reset(left)
		return
	}
	b.timedOut.Store(true)
	b.cancel(causeRead)
}

// Close implements io.Closer; the first call finishes the request.
func (b *attemptBody) Close() error {
	err := b.rc.Close()
	if !b.closed.CompareAndSwap(false, true) {
		return err
	}
	if b.timer != nil {
		b.timer.Stop()
	}
	// the watchdog no longer bounds anything: stop it and let the
	// attempt's context go
	b.w.stop()
	b.cancel(nil)
	end := OutcomeOK
	switch {
	case b.timedOut.Load():
		end = OutcomeReadTimeout
	case b.cut.Load():
		end = OutcomeReset
	}
	b.done(end)
	return err
}
