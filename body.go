package resilient

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// bodySource is a client's request body shared by the attempts of one
// exchange. It is never held back: an attempt reads the client's bytes
// as they arrive, so uploads stream and bidirectional exchanges work as
// with `transport http`. While the request may still be retried, what
// has been read is kept, up to limit bytes, so that a retry can send the
// copy again and then go on with what the client has not sent yet. Once
// more than limit bytes have gone out, the copy is dropped and the
// request can no longer be retried.
//
// net/http may go on reading a request body after RoundTrip returned
// (its write loop runs on its own goroutine), so each attempt reads
// through a reader of its own, and only the reader of the latest
// attempt may read: an older one gets errBodyMoved. Reads from the
// client are serialized, so one attempt's read is over before the next
// attempt reads on, and a byte read by an attempt that is given up is
// still in the copy for the next one.
type bodySource struct {
	body   io.ReadCloser // the client's
	length int64         // its Content-Length; -1: unknown
	limit  int64         // bytes kept for replay at most; 0: none
	// paused accumulates the time attempts spent waiting for the client,
	// which does not count toward the exchange's total bound
	paused *atomic.Int64

	readMu sync.Mutex // held while reading from the client

	mu        sync.Mutex // guards what follows
	kept      []byte     // what was read, while keeping
	keeping   bool
	n         int64 // bytes read from the client
	done      bool  // the client's body ended: err says how
	err       error
	clientErr error // the client's body failed (not io.EOF)
	touched   bool  // some byte of it may have been read
	cur       *bodyReader
	ended     bool // the exchange is over: closing the last reader closes the client's body
	open      bool // ...unless it is held open, for a fingerprint still to take
	closed    bool // the client's body was closed
	readers   int  // handed out so far
	// every byte read from the client goes through it as it arrives
	// (an idempotency key's fingerprint); nil: none
	hash io.Writer

	first bodyReader // the first attempt's, inline
}

// errBodyMoved is what an attempt that was given up reads: a later
// attempt now sends the body.
var errBodyMoved = errors.New("request body moved to a later attempt")

// errBodyLost is what a retry reads when the part of the body it must
// send again was dropped; retries are decided only while the copy is
// whole, so this takes a client read racing past max_body.
var errBodyLost = errors.New("request body over max_body: cannot be sent again")

func newBodySource(body io.ReadCloser, contentLength, limit int64, paused *atomic.Int64) *bodySource {
	s := new(bodySource)
	s.init(body, contentLength, limit, paused)
	return s
}

// init sets up s, which may sit inside another struct.
func (s *bodySource) init(body io.ReadCloser, contentLength, limit int64, paused *atomic.Int64) {
	s.body, s.length, s.limit, s.paused = body, contentLength, limit, paused
	s.keeping = limit > 0 && contentLength <= limit
	if s.keeping && contentLength > 0 {
		s.kept = make([]byte, 0, contentLength)
	}
}

// reader returns the body as the next attempt sends it: the copy, then
// the rest of the client's body. Earlier readers stop working. w, when
// not nil, is told when a read waits for the client.
func (s *bodySource) reader(w *watchdog) *bodyReader {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &s.first
	if s.readers > 0 {
		r = new(bodyReader)
	}
	s.readers++
	*r = bodyReader{s: s, w: w}
	s.cur = r
	return r
}

// replayable reports whether a new attempt could send the whole body.
func (s *bodySource) replayable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keeping || !s.touched
}

// untouched reports whether no byte of the client's body was read, so
// the request may go, whole, to another upstream.
func (s *bodySource) untouched() bool {
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.touched
}

// failed returns the error the client's body failed with, if it did.
func (s *bodySource) failed() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientErr
}

// snapshot returns the whole body when it was read from the client to
// its end and kept, for a hedge to send as it is while the first attempt
// still reads: the copy no longer changes.
func (s *bodySource) snapshot() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done || s.err != io.EOF || !s.keeping || int64(len(s.kept)) != s.n {
		return nil, false
	}
	return s.kept[:s.n:s.n], true
}

// locked runs f under the lock that guards what the readers feed the
// body's hash.
func (s *bodySource) locked(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// complete reports whether the whole body was read from the client: to
// its end, or, of a known length, that many bytes (the client can send
// no more), whether or not a read has seen the end yet. net/http makes
// that read after sending the bytes, and the upstream, which has them
// all, may answer first.
func (s *bodySource) complete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done && s.err == io.EOF || s.length >= 0 && s.n >= s.length && s.clientErr == nil
}

// drainHash reads what the client has not sent yet, at most limit bytes,
// through hash only: an upstream that answered before reading the whole
// body still leaves a fingerprint of all of it. Attempts that still read
// get errBodyMoved. It reports whether the body was read to its end.
func (s *bodySource) drainHash(limit int64) bool {
	s.mu.Lock()
	s.cur = nil
	s.keeping, s.kept = false, nil
	s.mu.Unlock()
	s.readMu.Lock()
	defer s.readMu.Unlock()
	buf := make([]byte, 32<<10)
	for read := int64(0); read < limit; {
		s.mu.Lock()
		done := s.done
		s.mu.Unlock()
		if done {
			break
		}
		n, err := s.body.Read(buf[:min(int64(len(buf)), limit-read)])
		read += int64(n)
		s.mu.Lock()
		if n > 0 {
			s.touched = true
			s.n += int64(n)
			if s.hash != nil {
				s.hash.Write(buf[:n])
			}
		}
		if err != nil {
			s.done, s.err = true, err
			if err != io.EOF {
				s.clientErr = err
			}
		}
		s.mu.Unlock()
	}
	return s.complete()
}

// end marks the exchange over: no attempt follows, so the copy is let
// go as soon as the last reader is past it, and the client's body is
// closed once net/http closed the last reader. A body no byte of which
// was read is left as it is, for another upstream.
func (s *bodySource) end() {
	s.mu.Lock()
	s.ended = true
	s.keeping = false
	if s.cur == nil || s.cur.off >= s.n {
		s.kept = nil
	}
	closeNow := s.touched && (s.cur == nil || s.cur.closed) && !s.open
	s.mu.Unlock()
	if closeNow {
		s.closeClient()
	}
}

// holdOpen keeps the client's body open once the exchange ends, until
// letClose: what the upstream did not read of it is still to be hashed.
func (s *bodySource) holdOpen() {
	s.mu.Lock()
	s.open = true
	s.mu.Unlock()
}

// letClose ends holdOpen: the client's body is closed if the exchange
// is over and its last reader was closed.
func (s *bodySource) letClose() {
	s.mu.Lock()
	s.open = false
	closeNow := s.ended && s.touched && (s.cur == nil || s.cur.closed)
	s.mu.Unlock()
	if closeNow {
		s.closeClient()
	}
}

func (s *bodySource) closeClient() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	_ = s.body.Close()
}

// bodyReader is the request body as one attempt reads it.
type bodyReader struct {
	s      *bodySource
	w      *watchdog
	off    int64 // bytes of the body this reader returned
	closed bool  // guarded by s.mu
}

// fromCopy serves a read from the kept copy when this reader is behind
// the client's body. Called with s.mu held; ok is false when the read
// must go to the client.
func (r *bodyReader) fromCopy(p []byte) (n int, err error, ok bool) {
	s := r.s
	switch {
	case s.cur != r || r.closed:
		return 0, errBodyMoved, true
	case r.off < s.n:
		if s.kept == nil || int64(len(s.kept)) < s.n {
			return 0, errBodyLost, true
		}
		n = copy(p, s.kept[r.off:s.n])
		r.off += int64(n)
		if !s.keeping && r.off >= s.n {
			s.kept = nil // the last reader is past the copy
		}
		return n, nil, true
	case s.done:
		return 0, s.err, true
	}
	return 0, nil, false
}

// Read implements io.Reader.
func (r *bodyReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s := r.s
	s.mu.Lock()
	if n, err, ok := r.fromCopy(p); ok {
		s.mu.Unlock()
		return n, err
	}
	s.touched = true
	s.mu.Unlock()

	s.readMu.Lock()
	defer s.readMu.Unlock()
	s.mu.Lock()
	// while this reader waited, an older one may have read on
	if n, err, ok := r.fromCopy(p); ok {
		s.mu.Unlock()
		return n, err
	}
	s.mu.Unlock()

	since := r.w.clientWait()
	n, err := s.body.Read(p)
	if d := r.w.clientDone(since); d > 0 && s.paused != nil {
		s.paused.Add(int64(d))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if n > 0 {
		if s.hash != nil {
			s.hash.Write(p[:n])
		}
		if s.keeping {
			if s.n+int64(n) > s.limit {
				s.keeping, s.kept = false, nil
			} else {
				s.kept = appendBounded(s.kept, p[:n], s.limit)
			}
		}
		s.n += int64(n)
	}
	if err != nil {
		s.done, s.err = true, err
		if err != io.EOF {
			s.clientErr = err
		}
	}
	if s.cur != r || r.closed {
		// given up while it read: what it read is in the copy, if
		// anywhere, for the attempt that took over
		return 0, errBodyMoved
	}
	r.off += int64(n)
	return n, err
}

// Close implements io.Closer. It does not close the client's body,
// which a later attempt may still need, unless the exchange is over.
func (r *bodyReader) Close() error {
	s := r.s
	s.mu.Lock()
	r.closed = true
	last := s.ended && s.cur == r && s.touched && !s.open
	s.mu.Unlock()
	if last {
		s.closeClient()
	}
	return nil
}

// appendBounded appends b to kept, growing it to at most limit bytes of
// capacity: the memory held for replay is bounded by max_body, where
// append alone could double past it.
func appendBounded(kept, b []byte, limit int64) []byte {
	need := len(kept) + len(b)
	if need > cap(kept) {
		grown := int64(max(2*cap(kept), need, 512))
		grown = min(grown, max(limit, int64(need)))
		k := make([]byte, len(kept), grown)
		copy(k, kept)
		kept = k
	}
	return append(kept, b...)
}
