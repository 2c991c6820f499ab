package idempotency

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
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

// What is written is read back as it was.
func TestWireRoundTrip(t *testing.T) {
	for _, a := range wireAnswers() {
		fp := Fingerprint{9, 8, 7}
		r, err := decodeRecord(string(encodeRecord(fp, &a)))
		if err != nil {
			t.Fatalf("%+v: %v", a, err)
		}
		if !r.done || r.fp != fp || !reflect.DeepEqual(r.answer, a) {
			t.Errorf("wrote %+v, read %+v", a, r.answer)
		}
	}
	r, err := decodeRecord(flightValue([tokenLen]byte{1, 2}))
	if err != nil || r.done {
		t.Errorf("in-flight value read as %+v, %v", r, err)
	}
}

// Every cut of a record, and garbage of every kind, is an error and no
// panic; none of them reads as a completed record.
func TestWireRejects(t *testing.T) {
	a := wireAnswers()[0]
	v := string(encodeRecord(Fingerprint{1}, &a))
	for n := range len(v) {
		if _, err := decodeRecord(v[:n]); err == nil {
			t.Errorf("a record cut to %d of %d bytes decoded", n, len(v))
		}
	}
	withStatus := func(s int) string {
		b := []byte(v)
		b[34], b[35] = byte(s>>8), byte(s)
		return string(b)
	}
	notWhole := Answer{Status: 200}
	nw := string(encodeRecord(Fingerprint{}, &notWhole))
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
	} {
		if r, err := decodeRecord(bad); err == nil {
			t.Errorf("%s: decoded as %+v", name, r)
		} else if _, ok := err.(interface{ RedisError() }); !ok {
			t.Errorf("%s: %v is not a redis.Error", name, err)
		}
	}
	for _, h := range []http.Header{{"Bad Name": {"v"}}, {"X": {"line\r\nbreak"}}, {"": {"v"}}} {
		a := Answer{Status: 200, Header: h, Whole: true}
		if _, err := decodeRecord(string(encodeRecord(Fingerprint{}, &a))); err == nil {
			t.Errorf("header %q decoded", h)
		}
	}
	lines := http.Header{}
	for i := range maxHeaderLines + 1 {
		lines.Add("X-"+strings.Repeat("a", i%50+1), "v")
	}
	many := Answer{Status: 200, Header: lines, Whole: true}
	if _, err := decodeRecord(string(encodeRecord(Fingerprint{}, &many))); err == nil {
		t.Error("too many header lines decoded")
	}
}

// Whatever Redis holds, decoding neither panics nor yields a record
// that breaks the checks.
func FuzzDecodeRecord(f *testing.F) {
	for _, a := range wireAnswers() {
		f.Add(string(encodeRecord(Fingerprint{3}, &a)))
	}
	f.Add(flightValue([tokenLen]byte{}))
	f.Add("")
	f.Fuzz(func(t *testing.T, v string) {
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
	})
}
