package idempotency

import (
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	long := strings.Repeat("a", MaxKeyLen)
	for _, tc := range []struct {
		name   string
		values []string
		want   string // the key, when valid
		err    error  // the reason, when not
	}{
		{name: "sf-string", values: []string{`"8e03978e-40d5-43e8-bc93-6894a57f9324"`}, want: "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{name: "bare uuid", values: []string{"8e03978e-40d5-43e8-bc93-6894a57f9324"}, want: "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{name: "quoted and bare alike", values: []string{`"k"`}, want: "k"},
		{name: "bare", values: []string{"k"}, want: "k"},
		{name: "every tchar bare", values: []string{"!#$%&'*+-.^_`|~09azAZ"}, want: "!#$%&'*+-.^_`|~09azAZ"},
		{name: "escaped quote", values: []string{`"a\"b"`}, want: `a"b`},
		{name: "escaped backslash", values: []string{`"a\\b"`}, want: `a\b`},
		{name: "comma inside quotes is one key", values: []string{`"a,b"`}, want: "a,b"},
		{name: "spaces inside quotes", values: []string{`"a b"`}, want: "a b"},
		{name: "semicolon inside quotes", values: []string{`"a;b=1"`}, want: "a;b=1"},
		{name: "OWS around quoted", values: []string{" \t\"k\"\t "}, want: "k"},
		{name: "OWS around bare", values: []string{"  k\t"}, want: "k"},
		{name: "255 bare", values: []string{long}, want: long},
		{name: "255 quoted", values: []string{`"` + long + `"`}, want: long},
		{name: "255 after unquoting", values: []string{`"` + strings.Repeat(`\"`, MaxKeyLen) + `"`}, want: strings.Repeat(`"`, MaxKeyLen)},

		{name: "no value", values: nil, err: errNoValue},
		{name: "no value, empty slice", values: []string{}, err: errNoValue},
		{name: "empty", values: []string{""}, err: errEmpty},
		{name: "only spaces", values: []string{" \t "}, err: errEmpty},
		{name: "empty quoted", values: []string{`""`}, err: errEmpty},
		{name: "given twice", values: []string{"a", "b"}, err: errTwice},
		{name: "given twice, same value", values: []string{"a", "a"}, err: errTwice},
		{name: "256 bare", values: []string{long + "a"}, err: errTooLong},
		{name: "256 quoted", values: []string{`"` + long + `a"`}, err: errTooLong},
		{name: "256 after unquoting", values: []string{`"` + strings.Repeat(`\\`, MaxKeyLen+1) + `"`}, err: errTooLong},
		{name: "bare list", values: []string{"a,b"}, err: errList},
		{name: "bare list with spaces", values: []string{"a, b"}, err: errList},
		{name: "quoted list", values: []string{`"a", "b"`}, err: errList},
		{name: "quoted list without space", values: []string{`"a","b"`}, err: errList},
		{name: "trailing comma", values: []string{`"a",`}, err: errList},
		{name: "mixed list", values: []string{`a,"b"`}, err: errList},
		{name: "control inside quotes", values: []string{"\"a\x01b\""}, err: errControl},
		{name: "tab inside quotes", values: []string{"\"a\tb\""}, err: errControl},
		{name: "newline inside quotes", values: []string{"\"a\nb\""}, err: errControl},
		{name: "DEL inside quotes", values: []string{"\"a\x7fb\""}, err: errControl},
		{name: "control bare", values: []string{"a\x00b"}, err: errControl},
		{name: "tab inside bare", values: []string{"a\tb"}, err: errControl},
		{name: "non-ASCII inside quotes", values: []string{`"clé"`}, err: errNonASCII},
		{name: "non-ASCII bare", values: []string{"clé"}, err: errNotToken},
		{name: "bad escape", values: []string{`"a\nb"`}, err: errEscape},
		{name: "escaped comma", values: []string{`"a\,b"`}, err: errEscape},
		{name: "unterminated", values: []string{`"abc`}, err: errUnclosed},
		{name: "unterminated after escape", values: []string{`"abc\"`}, err: errUnclosed},
		{name: "backslash at the end", values: []string{`"abc\`}, err: errUnclosed},
		{name: "lone quote", values: []string{`"`}, err: errUnclosed},
		{name: "junk after quote", values: []string{`"a"b`}, err: errAfterQuote},
		{name: "junk after quote and space", values: []string{`"a" b`}, err: errAfterQuote},
		{name: "parameters", values: []string{`"a";p=1`}, err: errAfterQuote},
		{name: "second string", values: []string{`"a""b"`}, err: errAfterQuote},
		{name: "space inside bare", values: []string{"a b"}, err: errNotToken},
		{name: "quote inside bare", values: []string{`a"b"`}, err: errNotToken},
		{name: "semicolon bare", values: []string{"a;b"}, err: errNotToken},
		{name: "colon bare", values: []string{"urn:uuid:1"}, err: errNotToken},
		{name: "byte sequence", values: []string{":cHJldGVuZA==:"}, err: errNotToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKey(tc.values)
			if tc.err != nil {
				if err != tc.err || got != "" {
					t.Fatalf("ParseKey(%q) = %q, %v; want error %q", tc.values, got, err, tc.err)
				}
				if s := err.Error(); s != strings.ToLower(s[:1])+s[1:] || strings.HasSuffix(s, ".") {
					t.Errorf("error %q: want lower case, no final period", s)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseKey(%q) = %q, %v; want %q", tc.values, got, err, tc.want)
			}
		})
	}
}

// No error quotes the key: it is not to be logged in clear.
func TestParseKeyErrorsHideTheKey(t *testing.T) {
	const secret = "zq7secretzq7"
	for _, v := range []string{secret + ", x", `"` + secret, `"` + secret + `"x`, secret + " y", `"` + secret + `\q"`, strings.Repeat(secret, 30)} {
		_, err := ParseKey([]string{v})
		if err == nil {
			t.Fatalf("ParseKey(%q) accepted", v)
		}
		if strings.Contains(err.Error(), "zq7") {
			t.Errorf("error %q quotes the key", err)
		}
	}
}

// Whatever the input, ParseKey returns a valid key or an error, and a
// key it returns parses again, quoted, to itself.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{`"a"`, "a", `"a\"b"`, `"a,b"`, "a,b", `"`, `"\`, " ", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		k, err := ParseKey([]string{v})
		if err != nil {
			return
		}
		if k == "" || len(k) > MaxKeyLen {
			t.Fatalf("ParseKey(%q) = %q", v, k)
		}
		q := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(k) + `"`
		if again, err := ParseKey([]string{q}); err != nil || again != k {
			t.Fatalf("key %q quoted as %s parses to %q, %v", k, q, again, err)
		}
	})
}
