package idempotency

import (
	"bytes"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/caddy-resilient/resilient/idempotency/answers"
)

func wireAnswers() []Answer {
	return []Answer{
		{Status: 201, Header: http.Header{"Content-Type": {"application/json"}, "Set-Cookie": {"a=1", "b=2"}}, Body: []byte(`{"id":"ch_1"}`), Whole: true},
		{Status: 200, Whole: true},
		{Status: 200, Header: http.Header{"X-Big": {"yes"}}},
		{Status: 504, Outcome: "read_timeout", Whole: true},
		{Status: 599, Header: http.Header{"X-Empty": {""}}, Body: []byte{0, 1, 2, 255}, Whole: true},
	}
}

// decodeString decodes a value as Redis gives it.
func decodeString(v string) (wireRecord, error) { return decodeRecord([]byte(v)) }

// What is written is read back as it was.
func TestWireRoundTrip(t *testing.T) {
	for _, a := range wireAnswers() {
		fp := Fingerprint{9, 8, 7}
		r, err := decodeRecord(encodeRecord(fp, a))
		if err != nil {
			t.Fatalf("%+v: %v", a, err)
		}
		if !r.done || r.fp != fp || !reflect.DeepEqual(r.answer, a) {
			t.Errorf("wrote %+v, read %+v", a, r.answer)
		}
		if head := encodeHead(fp, &a); !bytes.Equal(append(head, a.Body...), encodeRecord(fp, a)) {
			t.Errorf("%+v: the head and the body are not the record", a)
		}
	}
	r, err := decodeString(flightValue([tokenLen]byte{1, 2}))
	if err != nil || r.done {
		t.Errorf("in-flight value read as %+v, %v", r, err)
	}
}

// What a record cannot hold is kept as a used key (status only), so that
// encoding and decoding always agree: more header lines than a record
// reads back, a line no header may hold, an outcome that is no outcome.
func TestWireKeepsWhatItCannotReadAsUsed(t *testing.T) {
	lines := http.Header{}
	for i := range maxHeaderLines + 1 {
		lines.Add("X-"+strings.Repeat("a", i%50+1), "v")
	}
	for name, a := range map[string]Answer{
		"too many header lines":  {Status: 200, Header: lines, Body: []byte("ok"), Whole: true},
		"a bad header name":      {Status: 201, Header: http.Header{"Bad Name": {"v"}}, Body: []byte("ok"), Whole: true},
		"a header line break":    {Status: 201, Header: http.Header{"X": {"line\r\nbreak"}}, Whole: true},
		"an empty header name":   {Status: 201, Header: http.Header{"": {"v"}}},
		"an outcome too long":    {Status: 502, Outcome: strings.Repeat("a", maxOutcomeLen+1), Whole: true},
		"an outcome in capitals": {Status: 502, Outcome: "Reset", Whole: true},
	} {
		r, err := decodeRecord(encodeRecord(fpA, a))
		if err != nil {
			t.Errorf("%s: kept as a record that does not decode: %v", name, err)
			continue
		}
		if want := (Answer{Status: a.Status}); !reflect.DeepEqual(r.answer, want) {
			t.Errorf("%s: read back %+v, want %+v (used, status only)", name, r.answer, want)
		}
	}
	if got := keepable(Answer{Status: 0, Whole: true}); got.Status != http.StatusBadGateway {
		t.Errorf("status 0 kept as %d, want 502", got.Status)
	}
}

// Every cut of a record, and garbage of every kind, is an error and no
// panic; none of them reads as a completed record.
func TestWireRejects(t *testing.T) {
	a := wireAnswers()[0]
	v := string(encodeRecord(Fingerprint{1}, a))
	for n := range len(v) {
		if _, err := decodeString(v[:n]); err == nil {
			t.Errorf("a record cut to %d of %d bytes decoded", n, len(v))
		}
	}
	withStatus := func(s int) string {
		b := []byte(v)
		b[34], b[35] = byte(s>>8), byte(s)
		return string(b)
	}
	nw := string(encodeRecord(Fingerprint{}, Answer{Status: 200}))
	many := string(encodeRecord(Fingerprint{}, Answer{Status: 200, Header: http.Header{"X": {"v"}}}))
	for name, bad := range map[string]string{
		"empty":               "",
		"text":                "garbage",
		"json":                `{"status":200}`,
		"other version":       "\x02" + v[1:],
		"other kind":          v[:1] + "x" + v[2:],
		"short token":         flightValue([tokenLen]byte{})[:tokenLen+1],
		"long token":          flightValue([tokenLen]byte{}) + "x",
		"trailing bytes":      v + "x",
		"status 0":            withStatus(0),
		"status 99":           withStatus(99),
		"status 600":          withStatus(600),
		"status 65535":        withStatus(65535),
		"unknown flag":        v[:36] + "\x03" + v[37:],
		"body when not whole": nw[:len(nw)-1] + "\x01x",
		"huge length":         v[:37] + "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" + v[38:],
		"bad outcome":         v[:37] + "\x02A!" + v[38:],
		"1001 header lines":   many[:38] + "\xe9\x07" + many[39:],
		"bad header name":     strings.Replace(many, "\x01X\x01v", "\x01 \x01v", 1),
	} {
		if r, err := decodeString(bad); err == nil {
			t.Errorf("%s: decoded as %+v", name, r)
		} else if _, ok := err.(interface{ RedisError() }); !ok {
			t.Errorf("%s: %v is not a redis.Error", name, err)
		}
	}
}

// Whatever Redis holds, decoding neither panics nor yields a record
// that breaks the checks.
func FuzzDecodeRecord(f *testing.F) {
	for _, a := range wireAnswers() {
		f.Add(encodeRecord(Fingerprint{3}, a))
	}
	f.Add([]byte(flightValue([tokenLen]byte{})))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := decodeRecord(v)
		if err != nil || !r.done {
			return
		}
		a := r.answer
		if a.Status < 100 || a.Status > 599 || !a.Whole && a.Body != nil {
			t.Fatalf("decoded %+v", a)
		}
		for name, vs := range a.Header {
			for _, v := range vs {
				if name == "" || strings.ContainsAny(name+v, "\r\n\x00") {
					t.Fatalf("decoded header line %q: %q", name, v)
				}
			}
		}
		// what decodes is kept as it is, and reads back the same
		again, err := decodeRecord(encodeRecord(r.fp, a))
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("decoded %+v, kept again and read back as %+v, %v", r, again, err)
		}
	})
}

// Any answer at all (status, outcome, header lines, body, whole or not)
// is kept as keepable says, and reads back exactly as kept: encoding and
// decoding never disagree.
func FuzzRecordRoundTrip(f *testing.F) {
	f.Add(uint16(201), "", "Content-Type\x00application/json\x00Set-Cookie\x00a=1\x00Set-Cookie\x00b=2", []byte(`{"id":1}`), true, uint16(0))
	f.Add(uint16(504), "read_timeout", "", []byte(nil), true, uint16(0))
	f.Add(uint16(200), "", "X\x00line\r\nbreak", []byte("x"), true, uint16(0))
	f.Add(uint16(700), "Reset", "Bad Name\x00v", []byte("x"), false, uint16(0))
	f.Add(uint16(200), "", "X-Many\x00v", []byte("x"), true, uint16(1001))
	f.Fuzz(func(t *testing.T, status uint16, outcome, header string, body []byte, whole bool, repeat uint16) {
		h := http.Header{}
		parts := strings.Split(header, "\x00")
		for i := 0; i+1 < len(parts); i += 2 {
			h[parts[i]] = append(h[parts[i]], parts[i+1])
		}
		if len(parts) >= 2 {
			for range repeat % 1200 {
				h[parts[0]] = append(h[parts[0]], parts[1])
			}
		}
		a := Answer{Status: int(status), Outcome: outcome, Header: h, Body: body, Whole: whole}
		fp := Fingerprint{byte(status), byte(len(body))}
		want := keepable(a)
		r, err := decodeRecord(encodeRecord(fp, a))
		if err != nil {
			t.Fatalf("%+v kept as a record that does not decode: %v", a, err)
		}
		if !r.done || r.fp != fp || !reflect.DeepEqual(r.answer, want) {
			t.Fatalf("kept %+v, read back %+v", want, r.answer)
		}
		if sz := a.Size(); sz != answers.Cost(len(encodeRecord(fp, a))) {
			t.Fatalf("Size() = %d, the record is %d bytes", sz, len(encodeRecord(fp, a)))
		}
	})
}
