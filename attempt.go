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

// attempt is one try of an exchange: its phase timeouts, what
// net/http/httptrace tells of it, its breaker ticket and how it ended.
// The first attempt of an exchange lives inside the exchange; a retry
// gets a fresh one, since net/http may still report on an earlier try
// (the end of its request write, say) after it was given up.
type attempt struct {
	ct  httptrace.ClientTrace
	w   watchdog
	tk  ticket // the breaker's, when it was closed (see breaker.allow)
	res attemptResult

	write, read time.Duration
	start       time.Time
	h2c         bool   // plain connections speak HTTP/2
	hedge       bool   // a hedge of the first attempt
	kept        []byte // a hedge's body: the whole body, kept
	flags       atomic.Uint32
	conn        atomic.Pointer[countingConn]
	baseWritten atomic.Int64
	gotConnAt   atomic.Int64 // since start
	wroteAt     atomic.Int64 // since start
	headersAt   atomic.Int64 // since start
}

const (
	flagGotConn uint32 = 1 << iota
	flagWroteRequest
	flagReused
	flagResent
	flagWritten      // the whole request was written
	flagH2           // the connection speaks HTTP/2: other streams share it
	flagWroteHeaders // over HTTP/2, the request's headers were written
	flagLost         // it lost a hedged race: to be canceled (see loseRace)
	flagNoStream     // canceled before its connection came: no stream of it can start
)

// loseWait is how long the cancel of an HTTP/2 attempt that lost a
// hedged race waits for its headers to be written (see loseRace). They
// normally go out within a millisecond; a stream still waiting for its
// turn to write past this is on a connection far behind.
const loseWait = 100 * time.Millisecond

func (a *attempt) set(f uint32)      { a.flags.Or(f) }
func (a *attempt) has(f uint32) bool { return a.flags.Load()&f != 0 }
func (a *attempt) gotConn() bool     { return a.has(flagGotConn) }
func (a *attempt) since() int64      { return int64(time.Since(a.start)) }

// errResent is the cause an attempt is canceled with when net/http
// set out to send the request again on another connection after the
// first one had carried it: that would be a delivery no retry rule
// decided on, so it is stopped, and the attempt ends as a reset.
var errResent = errors.New("connection closed after the request was sent")

// trace sets up the hooks the attempt needs, and only those: each one is
// an allocation per attempt, and connect hooks would add net/http's
// own tracing of the dial.
func (a *attempt) trace() *httptrace.ClientTrace {
	a.ct.GotConn = a.onGotConn
	a.ct.WroteRequest = a.onWroteRequest
	return &a.ct
}

func (a *attempt) onGotConn(info httptrace.GotConnInfo) {
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
	a.gotConnAt.Store(a.since())
	h2 := a.h2c
	if cc != nil {
		a.baseWritten.Store(cc.written.Load())
		a.conn.Store(cc)
		if tc, ok := info.Conn.(*tls.Conn); ok {
			if !info.Reused {
				// read once per connection: ConnectionState locks
				// the handshake and copies the whole state
				cc.h2.Store(tc.ConnectionState().NegotiatedProtocol == "h2")
			}
			h2 = cc.h2.Load()
		}
	}
	f := flagGotConn
	if info.Reused {
		f |= flagReused
	}
	if h2 && !a.has(flagH2) {
		// the connection's bytes are every stream's: this one went out
		// when its headers did. The hook is set here, before net/http's
		// HTTP/2 client starts the stream's writer (so an HTTP/1 attempt
		// does not pay for it), and once
		f |= flagH2
		if prev := a.ct.WroteHeaders; prev != nil {
			a.ct.WroteHeaders = func() { prev(); a.onWroteHeaders() }
		} else {
			a.ct.WroteHeaders = a.onWroteHeaders
		}
	}
	if old := a.flags.Or(f); old&flagLost != 0 {
		// it lost before its connection came: canceled before any
		// writer of its request starts, it never leaves
		a.set(flagNoStream)
		a.w.abort(errHedgeLost)
		return
	}
	a.w.enterBeforeHeaders(causeWrite, a.write)
}

// loseRace cancels attempt a, which lost a hedged race.
//
// Over HTTP/2, whether a stream canceled early reached the upstream
// cannot be told afterwards: net/http's client writes its headers on a
// goroutine of its own, which may do so after RoundTrip returned, and
// says nothing when it gives up instead. So a loser is canceled where
// the answer is sure: before its connection came (no stream of it
// starts), or once its headers were written (it reached the upstream,
// which sees it reset at once). In between, the cancel waits for the
// headers, at most loseWait; past that it is canceled all the same, and
// counted as sent: the count may then be one over, never under.
func (a *attempt) loseRace() {
	old := a.flags.Or(flagLost)
	if old&flagH2 == 0 || old&flagWroteHeaders != 0 {
		a.w.abort(errHedgeLost)
		return
	}
	// onWroteHeaders cancels it
	time.AfterFunc(loseWait, func() { a.w.abort(errHedgeLost) })
}

// resending reports whether a second connection for this attempt would
// carry the request again: the first was an HTTP/1 connection that got
// bytes of it. HTTP/2 retries only streams the server refused or never
// saw (REFUSED_STREAM, GOAWAY), and a connection that got nothing of the
// request leaves nothing to duplicate.
func (a *attempt) resending() bool {
	cc := a.conn.Load()
	if cc == nil || cc.written.Load() == a.baseWritten.Load() {
		return false
	}
	return !a.has(flagH2)
}

func (a *attempt) onWroteRequest(info httptrace.WroteRequestInfo) {
	a.wroteAt.Store(a.since())
	a.set(flagWroteRequest)
	if info.Err == nil {
		a.set(flagWritten)
		// from here to the final response headers: interim 1xx answers
		// do not end this phase
		a.w.enterBeforeHeaders(causeRead, a.read)
	}
}

func (a *attempt) onWroteHeaders() {
	if old := a.flags.Or(flagWroteHeaders); old&flagLost != 0 {
		a.w.abort(errHedgeLost) // it waited for this (see loseRace)
	}
}

// headers notes that the final response headers arrived.
func (a *attempt) headers() {
	a.headersAt.Store(a.since())
	a.w.headersDone()
}

// neverSent reports whether the attempt provably put no byte of the
// request on the wire: it never got a connection, or the connection it
// got saw no write from it. Errors that say so on their own (HTTP/2
// REFUSED_STREAM) count too. Over HTTP/2 a connection's bytes are every
// stream's: the request went out when its headers were written, which
// is known for sure once net/http's writer of the stream is done. That
// is so when RoundTrip failed with the attempt's context not canceled
// (settled): HTTP/2 then waits for the writer. A stream canceled
// otherwise may have its headers written yet, and counts as sent.
func (a *attempt) neverSent(err error, settled bool) bool {
	if a.has(flagResent) {
		return false
	}
	if !a.gotConn() {
		return true
	}
	if err != nil && strings.Contains(err.Error(), "REFUSED_STREAM") {
		return true
	}
	if f := a.flags.Load(); f&flagH2 != 0 {
		return f&flagNoStream != 0 || (settled && f&flagWroteHeaders == 0)
	}
	cc := a.conn.Load()
	return cc != nil && cc.written.Load() == a.baseWritten.Load()
}

// phases returns the per-phase timing of the attempt for the log.
func (a *attempt) phases() phaseTimes {
	var p phaseTimes
	got, wrote, hdrs := a.gotConnAt.Load(), a.wroteAt.Load(), a.headersAt.Load()
	if !a.has(flagReused) {
		p.connect = time.Duration(got) // dial, and TLS handshake if any
	}
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
	connect, write, wait time.Duration
}

// countingConn counts the bytes written to an upstream connection, so an
// attempt can tell whether any of its request left.
type countingConn struct {
	net.Conn
	written atomic.Int64
	refused atomic.Bool
	h2      atomic.Bool // its TLS handshake chose HTTP/2
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

// responseBody wraps the body of the final answer. It enforces the read
// timeout as the longest silence while the body streams (on the
// attempt's watchdog), notices a body the upstream cut short, and
// finishes the exchange (slot, log, placeholders) once it is closed.
type responseBody struct {
	rc     io.ReadCloser
	ex     *exchange
	a      *attempt
	watch  bool            // the read bound is on
	client context.Context // the client's request: its end is no cut
	cut    atomic.Bool     // a read failed on the upstream's side
	closed atomic.Bool
}

func (b *responseBody) Read(p []byte) (int, error) {
	w := &b.a.w
	if b.watch {
		w.bodyReadBegin()
	}
	n, err := b.rc.Read(p)
	if b.watch {
		w.bodyReadEnd()
	}
	if k := b.ex.keyed; k != nil {
		k.capture(p[:n])
		k.eof = k.eof || err == io.EOF
	}
	if fb := b.ex.fb; fb != nil && fb.capture {
		fb.fallbackCapture(p[:n], err == io.EOF)
	}
	if err != nil && err != io.EOF {
		switch {
		case w.idleFire.Load():
			err = &Error{Outcome: OutcomeReadTimeout, Err: err}
		case b.client.Err() == nil:
			// short of its Content-Length, a broken chunk, a reset:
			// the upstream cut its answer
			b.cut.Store(true)
		}
	}
	return n, err
}

// Close implements io.Closer; the first call finishes the exchange.
func (b *responseBody) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return b.rc.Close()
	}
	if k := b.ex.keyed; k != nil && !k.ended && !k.eof {
		// the client stopped reading (it left): the repeat gets the answer
		b.drainAnswer()
	}
	err := b.rc.Close()
	// the watchdog no longer bounds anything: stop it and let the
	// attempt's context go
	w := &b.a.w
	w.stop()
	w.cancel(nil)
	end := OutcomeOK
	switch {
	case w.idleFire.Load():
		end = OutcomeReadTimeout
	case b.cut.Load():
		end = OutcomeReset
	}
	b.ex.bodyClosed(b.a, end)
	return err
}
