package resilient

import (
	"math"
	"math/big"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParseTimeLeft(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1.5", 1500 * time.Millisecond, true},
		{"1e3", 1000 * time.Second, true},
		{"2.5E-1", 250 * time.Millisecond, true},
		{".5", 500 * time.Millisecond, true},
		{"5.", 5 * time.Second, true},
		{"0", 0, true},
		{" 2 ", 2 * time.Second, true},
		{"1500ms", 1500 * time.Millisecond, true},
		{"1h30m", 90 * time.Minute, true},
		{".5s", 500 * time.Millisecond, true},
		{"1e-400", 0, true},       // too small for float64: nothing left
		{"1e300", noCap, true},    // too large for a duration: no cap
		{"2562048h", noCap, true}, // too large for a duration: no cap
		{"10000000000000000000ns", noCap, true},
		{"2562048h1x", 0, false},             // too large, and junk
		{"1e309", 0, false},                  // past float64
		{"0x1p3", 0, false},                  // hex
		{"1_0", 0, false},                    // underscores
		{"1_000ms", 0, false},                // in a duration too
		{"+1", 0, false},                     // no sign
		{"+1s", 0, false},                    // no sign
		{"-0", 0, false},                     // no sign
		{"-1", 0, false},                     // negative
		{"Inf", 0, false},                    // not a number
		{"infinity", 0, false},               // nor this
		{"NaN", 0, false},                    // nor this
		{"", 0, false},                       // empty
		{".", 0, false},                      // no digit
		{"1e", 0, false},                     // no exponent digit
		{"1.5.2", 0, false},                  // two points
		{"10parsecs", 0, false},              // no such unit
		{"1s ms", 0, false},                  // a blank inside
		{"\u00a01", 0, false},                // not a blank HTTP trims
		{"1\u00b5s", time.Microsecond, true}, // µ (micro sign) as Go takes it
	} {
		got, ok := parseTimeLeft(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseTimeLeft(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"200m", 200 * time.Millisecond, true},
		{"1H", time.Hour, true},
		{"99999999n", 99999999, true},
		{"0S", 0, true},
		{"875999H", 875999 * time.Hour, true}, // just under noCap (100 years): a cap
		{"876000H", noCap, true},              // noCap: none
		{"2562048H", noCap, true},             // past a duration: still valid, no cap
		{"99999999H", noCap, true},
		{"100000000m", 0, false}, // 9 digits
		{"1", 0, false},
		{"m", 0, false},
		{"1h", 0, false}, // units are case-sensitive
		{"-1S", 0, false},
		{"+1S", 0, false},
		{"1_0S", 0, false},
		{"", 0, false},
	} {
		got, ok := parseGRPCTimeout(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestFormatSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		2499 * time.Millisecond:    "2.499",
		2499999 * time.Microsecond: "2.499", // cut, never rounded up
		5 * time.Millisecond:       "0.005",
		30 * time.Second:           "30.000",
		0:                          "0.000",
		-time.Second:               "0.000",
	} {
		if got := formatSeconds(d); got != want {
			t.Errorf("formatSeconds(%v) = %q, want %q", d, got, want)
		}
		// what a second gateway reads back is at most what was left
		if back, ok := parseTimeLeft(formatSeconds(d)); !ok || back > max(d, 0) {
			t.Errorf("formatSeconds(%v) reads back as %v, %v", d, back, ok)
		}
	}
}

// The grammar of a caller's time left, written out plainly: an unsigned
// decimal number of seconds, or a sequence of unsigned numbers, each
// with a unit, between optional blanks.
var (
	refDecimal  = regexp.MustCompile(`^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$`)
	refDuration = regexp.MustCompile(`^(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+$`)
	refPart     = regexp.MustCompile(`([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)`)
	refUnits    = map[string]int64{"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}
)

// refTimeLeft reads v by the grammar above, in exact arithmetic: the
// value in nanoseconds, and whether it reads; exact is false where
// float64 rounding may tip the answer (at the very edges of a range).
func refTimeLeft(v string) (ns *big.Float, ok, exact bool) {
	v = strings.Trim(v, " \t")
	const prec = 512
	switch {
	case refDecimal.MatchString(v):
		f, _, err := big.ParseFloat(v, 10, prec, big.ToNearestEven)
		if err != nil {
			return nil, false, true // an exponent past any float
		}
		edge := new(big.Float).SetFloat64(math.MaxFloat64)
		if f.Cmp(edge) > 0 {
			// past float64: an overflow, not a duration
			return nil, false, near(f, edge)
		}
		return f.Mul(f, big.NewFloat(1e9)), true, !near(f, edge)
	case refDuration.MatchString(v):
		sum := new(big.Float).SetPrec(prec)
		parts := refPart.FindAllStringSubmatch(v, -1)
		for _, p := range parts {
			n, _, err := big.ParseFloat(p[1], 10, prec, big.ToNearestEven)
			if err != nil {
				return nil, false, true
			}
			sum.Add(sum, n.Mul(n, new(big.Float).SetInt64(refUnits[p[2]])))
		}
		// however large: one past what a duration holds is no cap
		return sum, true, true
	}
	return nil, false, true
}

// near reports whether a and b are within a millionth of each other.
func near(a, b *big.Float) bool {
	d := new(big.Float).Sub(a, b)
	d.Abs(d)
	return d.Cmp(new(big.Float).Quo(new(big.Float).Abs(b), big.NewFloat(1e6))) <= 0
}

// agreesWithRef checks a reading (got, ok) of v against the reference
// reading ns: the same verdict, and a value within float64's rounding
// (capped at noCap, as parseTimeLeft and parseGRPCTimeout cap).
func agreesWithRef(t *testing.T, v string, got time.Duration, ok bool, ns *big.Float, refOK bool) {
	t.Helper()
	if ok != refOK {
		t.Fatalf("%q: read %v, %v; the grammar says ok=%v", v, got, ok, refOK)
	}
	if !ok {
		return
	}
	capAt := new(big.Float).SetInt64(int64(noCap))
	if ns.Cmp(capAt) >= 0 {
		if got != noCap {
			t.Fatalf("%q: read %v; the grammar says %s ns, no cap", v, got, ns.Text('g', 20))
		}
		return
	}
	// float64 keeps 53 bits: a relative error of 2^-52 twice over, and
	// a nanosecond for each part cut to whole nanoseconds
	want, _ := ns.Float64()
	tol := 4 + math.Abs(want)*0x1p-50
	if math.Abs(float64(got)-want) > tol {
		t.Fatalf("%q: read %v (%d ns); the grammar says %s ns", v, got, int64(got), ns.Text('g', 20))
	}
}

func FuzzParseTimeLeft(f *testing.F) {
	for _, s := range []string{"1.5", "1e3", "1500ms", "1h30m", ".5", "5.", "0", " 2 ", "0x1p3", "1_0",
		"+1", "-1", "Inf", "NaN", "1e309", "1e-400", "1e300", "9223372036.854775807", "2562047h47m16.854775807s",
		"2562048h", "1.5.2", "10parsecs", "1µs", "1μs", ".s", "1e", "\t3\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, ok := parseTimeLeft(v)
		ns, refOK, exact := refTimeLeft(v)
		if !exact {
			return // at the edge of float64 or int64: either verdict is fair
		}
		agreesWithRef(t, v, got, ok, ns, refOK)
	})
}

// refGRPCUnits are grpc-timeout's units in nanoseconds.
var refGRPCUnits = map[byte]int64{'H': 3600e9, 'M': 60e9, 'S': 1e9, 'm': 1e6, 'u': 1e3, 'n': 1}

var refGRPC = regexp.MustCompile(`^[0-9]{1,8}[HMSmun]$`)

func FuzzParseGRPCTimeout(f *testing.F) {
	for _, s := range []string{"200m", "1H", "99999999H", "2562047H", "2562048H", "876000H", "0n", "100000000m",
		"1h", "-1S", "+1S", "1_0S", "", "S", "12345678u"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, ok := parseGRPCTimeout(v)
		if !refGRPC.MatchString(v) {
			agreesWithRef(t, v, got, ok, nil, false)
			return
		}
		n, _, err := big.ParseFloat(v[:len(v)-1], 10, 128, big.ToNearestEven)
		if err != nil {
			t.Fatal(err)
		}
		agreesWithRef(t, v, got, ok, n.Mul(n, new(big.Float).SetInt64(refGRPCUnits[v[len(v)-1]])), true)
		// what it reads is written back as at most as much
		if got < noCap {
			if back, ok := parseGRPCTimeout(formatGRPCTimeout(got)); !ok || back > got {
				t.Fatalf("%q: written back as %q, which reads %v", v, formatGRPCTimeout(got), back)
			}
		}
	})
}
