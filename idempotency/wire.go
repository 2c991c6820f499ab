package idempotency

import (
	"encoding/binary"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// A record's value in Redis is binary, to keep a body as it is (JSON
// would grow it by a third), and starts with its format's version, so
// that an instance never takes a record of another format for its own:
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

// encodeRecord returns the completed record of fp and a, as bytes: the
// body is copied into it once, and not again into a string.
func encodeRecord(fp Fingerprint, a *Answer) []byte {
	b := make([]byte, 0, 64+a.Size())
	b = append(b, wireVersion, kindDone)
	b = append(b, fp[:]...)
	status := a.Status
	if status < 100 || status > 599 {
		status = http.StatusBadGateway // what the transport would have said of it
	}
	b = binary.BigEndian.AppendUint16(b, uint16(status))
	var flags byte
	if a.Whole {
		flags |= 1
	}
	b = append(b, flags)
	b = appendString(b, a.Outcome)
	names := make([]string, 0, len(a.Header))
	lines := 0
	for name, vs := range a.Header {
		names = append(names, name)
		lines += len(vs)
	}
	slices.Sort(names) // one answer, one value: records compare equal
	b = binary.AppendUvarint(b, uint64(lines))
	for _, name := range names {
		for _, v := range a.Header[name] {
			b = appendString(b, name)
			b = appendString(b, v)
		}
	}
	if a.Whole {
		b = binary.AppendUvarint(b, uint64(len(a.Body)))
		b = append(b, a.Body...)
	} else {
		b = appendString(b, "")
	}
	return b
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
// returns a record that fails a check.
func decodeRecord(v string) (wireRecord, error) {
	if len(v) < 2 {
		return wireRecord{}, bad("too short")
	}
	if v[0] != wireVersion {
		return wireRecord{}, bad("unknown format version")
	}
	d := decoder{s: v[2:]}
	switch v[1] {
	case kindInFlight:
		if len(d.s) != tokenLen {
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
	r.answer.Status = int(binary.BigEndian.Uint16([]byte(status)))
	if r.answer.Status < 100 || r.answer.Status > 599 {
		return wireRecord{}, bad("status out of range")
	}
	if flags[0]&^1 != 0 {
		return wireRecord{}, bad("unknown flags")
	}
	r.answer.Whole = flags[0]&1 != 0

	r.answer.Outcome = d.str(maxOutcomeLen)
	if strings.ContainsFunc(r.answer.Outcome, func(c rune) bool { return (c < 'a' || c > 'z') && c != '_' }) {
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
		if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) {
			return wireRecord{}, bad("invalid header line")
		}
		r.answer.Header[name] = append(r.answer.Header[name], value)
	}
	body := d.str(len(v))
	switch {
	case d.err != nil:
		return wireRecord{}, d.err
	case d.s != "":
		return wireRecord{}, bad("trailing bytes")
	case !r.answer.Whole && body != "":
		return wireRecord{}, bad("a body in an answer not kept whole")
	}
	if body != "" {
		r.answer.Body = []byte(body)
	}
	return r, nil
}

// decoder reads a value from the front, remembering its first error so
// that a sequence of reads needs one check.
type decoder struct {
	s   string
	err error
}

var errTruncated = bad("truncated")

func (d *decoder) take(n int) string {
	if d.err != nil {
		return ""
	}
	if n < 0 || n > len(d.s) {
		d.err = errTruncated
		return ""
	}
	s := d.s[:n]
	d.s = d.s[n:]
	return s
}

func (d *decoder) uvarint() int {
	if d.err != nil {
		return 0
	}
	n, k := binary.Uvarint([]byte(d.s[:min(len(d.s), binary.MaxVarintLen64)]))
	if k <= 0 || n > uint64(len(d.s)) {
		// A length can never exceed what is left of the value.
		d.err = errTruncated
		return 0
	}
	d.s = d.s[k:]
	return int(n)
}

// str reads a length-prefixed string of at most limit bytes.
func (d *decoder) str(limit int) string {
	n := d.uvarint()
	if d.err == nil && n > limit {
		d.err = bad("a field is too long")
		return ""
	}
	return d.take(n)
}
