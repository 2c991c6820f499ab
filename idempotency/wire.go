package idempotency

import (
	"encoding/binary"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// A record's value, in a Memory's store as in Redis, is binary, to keep
// a body as it is (JSON would grow it by a third), and starts with its
// format's version, so that an instance never takes a record of another
// format for its own:
//
//	in flight:  0x01 'f' token (16 bytes)
//	completed:  0x01 'c' fingerprint (32) status (2, big endian) flags (1; bit 0: whole)
//	            outcome         uvarint length, bytes
//	            header          uvarint number of lines, each: name, value (uvarint length, bytes)
//	            body            uvarint length, bytes (empty unless whole)
//
// Nothing may follow. A value read back is checked as thoroughly as if
// anyone could have written it: a replay of a bad record would reach a
// client.
const (
	wireVersion  = 1
	kindInFlight = 'f'
	kindDone     = 'c'
	tokenLen     = 16

	maxOutcomeLen  = 64   // longer than any outcome name
	maxHeaderLines = 1000 // far more than any answer carries
)

// flightValue is the in-flight value of the claim holding token.
func flightValue(token [tokenLen]byte) string {
	return string([]byte{wireVersion, kindInFlight}) + string(token[:])
}

// keepable returns a as a record keeps it, so that what is kept reads
// back as it was kept (decodeRecord refuses what a record could not
// hold): a status outside 100-599 is the 502 the transport would have
// said of it; an answer whose header or outcome could not be read back
// (more than maxHeaderLines lines, a line no header may hold, an
// outcome that is no outcome name) keeps its status only, as an answer
// not kept whole; the body goes with a whole answer only; an empty
// header or body is nil, as decoding gives them.
func keepable(a Answer) Answer {
	if a.Status < 100 || a.Status > 599 {
		a.Status = http.StatusBadGateway
	}
	if !a.Whole || len(a.Body) == 0 {
		a.Body = nil
	}
	lines := 0
	for name, vs := range a.Header {
		for _, v := range vs {
			lines++
			if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(v) {
				lines = maxHeaderLines + 1
			}
		}
	}
	if lines == 0 {
		a.Header = nil
	}
	if lines > maxHeaderLines || !outcomeName(a.Outcome) {
		a = Answer{Status: a.Status}
	}
	return a
}

// outcomeName reports whether s can be a record's outcome: short, and
// of lower-case letters and underscores only, as every outcome is.
func outcomeName(s string) bool {
	return len(s) <= maxOutcomeLen && !strings.ContainsFunc(s, func(c rune) bool { return (c < 'a' || c > 'z') && c != '_' })
}

// encodeHead returns the completed record of fp and a, which keepable
// gave, up to its body: the record is what it returns followed by a's
// body when a is whole, so that a body is copied once, into the store
// that keeps it.
func encodeHead(fp Fingerprint, a *Answer) []byte {
	lines, size := 0, 64+len(a.Outcome)
	for name, vs := range a.Header {
		lines += len(vs)
		for _, v := range vs {
			size += 2*binary.MaxVarintLen32 + len(name) + len(v)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, wireVersion, kindDone)
	b = append(b, fp[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(a.Status))
	var flags byte
	if a.Whole {
		flags |= 1
	}
	b = append(b, flags)
	b = appendString(b, a.Outcome)
	b = binary.AppendUvarint(b, uint64(lines))
	if len(a.Header) == 1 {
		for name, vs := range a.Header {
			for _, v := range vs {
				b = appendString(appendString(b, name), v)
			}
		}
	} else if len(a.Header) > 1 {
		names := make([]string, 0, len(a.Header))
		for name := range a.Header {
			names = append(names, name)
		}
		slices.Sort(names) // one answer, one value: records compare equal
		for _, name := range names {
			for _, v := range a.Header[name] {
				b = appendString(appendString(b, name), v)
			}
		}
	}
	body := 0
	if a.Whole {
		body = len(a.Body)
	}
	return binary.AppendUvarint(b, uint64(body))
}

// encodeRecord returns the whole completed record of fp and a, as
// keepable gives a: its value in Redis.
func encodeRecord(fp Fingerprint, a Answer) []byte {
	a = keepable(a)
	return append(encodeHead(fp, &a), a.Body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// wireRecord is a record as read from Redis.
type wireRecord struct {
	done   bool // else in flight
	fp     Fingerprint
	answer Answer
}

// badRecordError says a value under a record's key is not a record this
// instance can read. It is an error of Redis's content, not of Redis:
// Redis answered. It is a redis.Error (it has RedisError), so that
// Remote.Do counts it but does not take Redis for down, which would stop
// the fleet sharing anything for a second because of one key (say, a
// record of a newer format during a rolling upgrade).
type badRecordError struct{ why string }

func (e *badRecordError) Error() string {
	return "idempotency: the record in redis does not decode: " + e.why
}

// RedisError marks the error as Redis's content; see badRecordError.
func (e *badRecordError) RedisError() {}

func bad(why string) error { return &badRecordError{why: why} }

// decodeRecord reads a record's value. It never panics and never
// returns a record that fails a check. The answer's body is a slice of
// v, whose bytes the caller gives up.
func decodeRecord(v []byte) (wireRecord, error) {
	if len(v) < 2 {
		return wireRecord{}, bad("too short")
	}
	if v[0] != wireVersion {
		return wireRecord{}, bad("unknown format version")
	}
	d := decoder{b: v[2:]}
	switch v[1] {
	case kindInFlight:
		if len(d.b) != tokenLen {
			return wireRecord{}, bad("in-flight token of the wrong length")
		}
		return wireRecord{}, nil
	case kindDone:
	default:
		return wireRecord{}, bad("unknown kind")
	}

	var r wireRecord
	r.done = true
	copy(r.fp[:], d.take(len(r.fp)))
	status := d.take(2)
	flags := d.take(1)
	if d.err != nil {
		return wireRecord{}, d.err
	}
	r.answer.Status = int(binary.BigEndian.Uint16(status))
	if r.answer.Status < 100 || r.answer.Status > 599 {
		return wireRecord{}, bad("status out of range")
	}
	if flags[0]&^1 != 0 {
		return wireRecord{}, bad("unknown flags")
	}
	r.answer.Whole = flags[0]&1 != 0

	r.answer.Outcome = string(d.str(maxOutcomeLen))
	if !outcomeName(r.answer.Outcome) {
		return wireRecord{}, bad("outcome is not an outcome name")
	}
	lines := d.uvarint()
	if lines > maxHeaderLines {
		return wireRecord{}, bad("too many header lines")
	}
	if lines > 0 {
		r.answer.Header = make(http.Header, min(lines, 32))
	}
	for range lines {
		name, value := d.str(len(v)), d.str(len(v))
		if d.err != nil {
			return wireRecord{}, d.err
		}
		if !httpguts.ValidHeaderFieldName(string(name)) || !httpguts.ValidHeaderFieldValue(string(value)) {
			return wireRecord{}, bad("invalid header line")
		}
		key := string(name)
		r.answer.Header[key] = append(r.answer.Header[key], string(value))
	}
	body := d.str(len(v))
	switch {
	case d.err != nil:
		return wireRecord{}, d.err
	case len(d.b) != 0:
		return wireRecord{}, bad("trailing bytes")
	case !r.answer.Whole && len(body) != 0:
		return wireRecord{}, bad("a body in an answer not kept whole")
	}
	if len(body) != 0 {
		r.answer.Body = body[:len(body):len(body)]
	}
	return r, nil
}

// decoder reads a value from the front, remembering its first error so
// that a sequence of reads needs one check.
type decoder struct {
	b   []byte
	err error
}

var errTruncated = bad("truncated")

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = errTruncated
		return nil
	}
	b := d.b[:n]
	d.b = d.b[n:]
	return b
}

func (d *decoder) uvarint() int {
	if d.err != nil {
		return 0
	}
	n, k := binary.Uvarint(d.b)
	if k <= 0 || n > uint64(len(d.b)) {
		// A length can never exceed what is left of the value.
		d.err = errTruncated
		return 0
	}
	d.b = d.b[k:]
	return int(n)
}

// str reads a length-prefixed field of at most limit bytes.
func (d *decoder) str(limit int) []byte {
	n := d.uvarint()
	if d.err == nil && n > limit {
		d.err = bad("a field is too long")
		return nil
	}
	return d.take(n)
}
