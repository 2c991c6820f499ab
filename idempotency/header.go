package idempotency

import (
	"errors"
	"strings"
)

// MaxKeyLen is the longest key accepted, in characters after unquoting.
// The draft leaves the length to the server; 255 holds any UUID or
// ULID with room to spare and bounds what a record keys on.
const MaxKeyLen = 255

// The reasons a key is refused. They say what is wrong, never what the
// key was: a key is not kept or logged in clear.
var (
	errNoValue    = errors.New("idempotency key header has no value")
	errTwice      = errors.New("idempotency key header is given more than once; send it once, with one key")
	errEmpty      = errors.New("idempotency key is empty")
	errTooLong    = errors.New("idempotency key is longer than 255 characters")
	errList       = errors.New(`idempotency key is a list of several values (a comma outside quotes); send one key, or quote it as one string ("a,b")`)
	errControl    = errors.New("idempotency key holds a control character")
	errNonASCII   = errors.New("idempotency key holds a character outside printable ASCII, which a quoted string may not hold")
	errEscape     = errors.New(`idempotency key has a bad escape: inside quotes a backslash may only precede " or \`)
	errUnclosed   = errors.New("idempotency key has a quote that is never closed")
	errAfterQuote = errors.New("idempotency key has characters after its closing quote")
	errNotToken   = errors.New("idempotency key is not a quoted string and holds characters other than letters, digits and !#$%&'*+-.^_`|~; quote it as a string")
)

// ParseKey reads the values of the Idempotency-Key header, all of them
// as req.Header.Values gives them, the way
// draft-ietf-httpapi-idempotency-key-header-07 §2.1 says: the value is a
// Structured Field string ("8e03…", with \" and \\ as its only escapes),
// and a bare value of RFC 9110 token characters is taken as well (a
// bare UUID is fine), so "k" and k are the same key. Spaces and tabs
// around the value are allowed (they are OWS).
//
// Refused: no value or an empty one, a key longer than MaxKeyLen after
// unquoting, a list (a comma outside quotes; "a,b" is one key), control
// characters (inside quotes too), a bad escape, an unclosed quote,
// anything after the closing quote (Structured Field parameters
// included: the draft defines none), and the header given more than
// once. The error says why, in lower case, without quoting the key.
func ParseKey(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", errNoValue
	case 1:
	default:
		return "", errTwice
	}
	v := strings.Trim(values[0], " \t")
	if v == "" {
		return "", errEmpty
	}
	var key string
	if v[0] == '"' {
		k, rest, err := unquote(v)
		if err != nil {
			return "", err
		}
		if rest = strings.TrimLeft(rest, " \t"); rest != "" {
			if rest[0] == ',' {
				return "", errList
			}
			return "", errAfterQuote
		}
		key = k
	} else {
		if err := checkToken(v); err != nil {
			return "", err
		}
		key = v
	}
	switch {
	case key == "":
		return "", errEmpty
	case len(key) > MaxKeyLen:
		return "", errTooLong
	}
	return key, nil
}

// unquote reads the sf-string at the start of s (RFC 8941 §3.3.3) and
// returns its content and what follows the closing quote.
func unquote(s string) (key, rest string, err error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return b.String(), s[i+1:], nil
		case c == '\\':
			i++
			if i == len(s) {
				return "", "", errUnclosed
			}
			if s[i] != '"' && s[i] != '\\' {
				return "", "", errEscape
			}
			c = s[i]
		case c < 0x20 || c == 0x7f:
			return "", "", errControl
		case c > 0x7f:
			return "", "", errNonASCII
		}
		if b.Len() <= MaxKeyLen {
			// One past the limit is enough to tell the key is too long;
			// the rest is read only to check its syntax.
			b.WriteByte(c)
		}
	}
	return "", "", errUnclosed
}

// checkToken reports why the bare value s is not an RFC 9110 token, if
// it is not one. A comma comes first: it is the likeliest mistake, a
// list sent where one key belongs.
func checkToken(s string) error {
	if strings.IndexByte(s, ',') >= 0 {
		return errList
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x20 || c == 0x7f:
			return errControl
		case !isTokenChar(c):
			return errNotToken
		}
	}
	return nil
}

// isTokenChar reports whether c is an RFC 9110 tchar.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
