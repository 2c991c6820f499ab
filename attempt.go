package resilient

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http/httptrace"
	"strings"
	"sync"
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
	flags        atomic.Uint32
	conn         atomic.Pointer[countingConn]
	baseWritten  int64
	connectNanos atomic.Int64 // TCP connect
	tlsNanos     atomic.Int64
	gotConnNanos atomic.Int64 // since start
	wroteNanos   atomic.Int64 // since start
	firstNanos   atomic.Int64 // since start
	tlsStartAt   atomic.Int64
	connStartAt  atomic.Int64
}

const (
	flagGotConn uint32 = 1 << iota
	flagInTLS
	flagWroteRequest
	flagFirstByte
	flagReused
	flagDialTimeout
)

func (a *attemptTrace) set(f uint32)                        { a.flags.Or(f) }
func (a *attemptTrace) has(f uint32) bool                   { return a.flags.Load()&f != 0 }
func (a *attemptTrace) gotConn() bool                       { return a.has(flagGotConn) }
func (a *attemptTrace) inTLS() bool                         { return a.has(flagInTLS) }
func (a *attemptTrace) since() int64                        { return int64(time.Since(a.start)) }
func (a *attemptTrace) phase(n *atomic.Int64) time.Duration { return time.Duration(n.Load()) }

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
		GotConn: func(info httptrace.GotConnInfo) {
			a.gotConnNanos.Store(a.since())
			if cc := unwrapCountingConn(info.Conn); cc != nil {
				a.baseWritten = cc.written.Load()
				a.conn.Store(cc)
			}
			f := flagGotConn
			if info.Reused {
				f |= flagReused
			}
			a.flags.And(^flagInTLS)
			a.set(f)
			a.w.enter(causeWrite, a.write)
		},
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			a.wroteNanos.Store(a.since())
			a.set(flagWroteRequest)
			if info.Err == nil && !a.has(flagFirstByte) {
				a.w.enter(causeRead, a.read)
			}
		},
		GotFirstResponseByte: func() {
			a.firstNanos.Store(a.since())
			a.set(flagFirstByte)
			a.w.enter(nil, 0)
		},
	}
}

// neverSent reports whether the attempt provably put no byte of the
// request on the wire: it never got a connection, or the connection it
// got saw no write from it. Errors that say so on their own (HTTP/2
// REFUSED_STREAM) count too.
func (a *attemptTrace) neverSent(err error) bool {
	if !a.gotConn() {
		return true
	}
	if err != nil && strings.Contains(err.Error(), "REFUSED_STREAM") {
		return true
	}
	cc := a.conn.Load()
	return cc != nil && cc.written.Load() == a.baseWritten
}

// phases returns the per-phase timing of the attempt for the log.
func (a *attemptTrace) phases() phaseTimes {
	p := phaseTimes{
		connect: a.phase(&a.connectNanos),
		tls:     a.phase(&a.tlsNanos),
	}
	got, wrote, first := a.gotConnNanos.Load(), a.wroteNanos.Load(), a.firstNanos.Load()
	if got > 0 && wrote >= got {
		p.write = time.Duration(wrote - got)
	}
	if wrote > 0 && first >= wrote {
		p.wait = time.Duration(first - wrote)
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
}

func newCountingConn(c net.Conn) *countingConn { return &countingConn{Conn: c} }

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
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
// streams, and finishes the request (slot, log, placeholders) once the
// body is closed.
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
	done   func(timedOut bool)
	once   sync.Once

	timer    *time.Timer
	reading  atomic.Int64 // when the Read in progress began (unix nanos); 0 between reads
	timedOut atomic.Bool
	closed   atomic.Bool
}

func newAttemptBody(rc io.ReadCloser, at *attemptResult, read time.Duration, done func(bool)) *attemptBody {
	b := &attemptBody{rc: rc, w: at.w, read: read, cancel: at.cancel, done: done}
	if read > 0 {
		b.timer = time.AfterFunc(read, b.check)
	}
	return b
}

func (b *attemptBody) Read(p []byte) (int, error) {
	if b.read <= 0 {
		return b.rc.Read(p)
	}
	b.reading.Store(time.Now().UnixNano())
	n, err := b.rc.Read(p)
	b.reading.Store(0)
	if err != nil && err != io.EOF && b.timedOut.Load() {
		err = &Error{Outcome: OutcomeReadTimeout, Err: err}
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

func (b *attemptBody) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		b.closed.Store(true)
		if b.timer != nil {
			b.timer.Stop()
		}
		// the watchdog no longer bounds anything: stop it and let the
		// attempt's context go
		b.w.stop()
		b.cancel(nil)
		b.done(b.timedOut.Load())
	})
	return err
}
