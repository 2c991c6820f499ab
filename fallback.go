package resilient

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-resilient/resilient/idempotency/answers"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"
	"golang.org/x/net/http/httpguts"
)

// Fallback keeps the last good answer of each read and serves it when
// the upstream fails (SPEC §15; RFC 5861's stale-if-error, from the
// gateway's side): exchange rates, catalogues, feature flags, a key set,
// for which an answer a few minutes old beats an error. An answer is
// kept as it streams to its client, never held back; it is served, with
// Age and outcome stale, when the request would end in one of the
// failures of On: at once while the breaker is open, and when the
// caller's deadline runs out instead of a 504. Off unless configured.
type Fallback struct {
	// A kept answer is served up to this old (its Age). An upstream's
	// `Cache-Control: stale-if-error=N` caps it for that answer.
	// Default: `1h`.
	Stale caddy.Duration `json:"stale,omitempty"`

	// The failures that fall back: outcomes (`breaker_open`,
	// `pool_timeout`, `rate_limited`, `connect_error`, `tls_error`,
	// `reset`, `timeout`: every *_timeout, the caller's deadline
	// included) and statuses or classes of the upstream's final answer.
	// Default: `["breaker_open","pool_timeout","connect_error","tls_error","reset","timeout","502","503","504"]`.
	On []string `json:"on,omitempty"`

	// The answers of requests of these methods are kept and served.
	// Default: `["GET","HEAD"]`.
	Methods []string `json:"methods,omitempty"`

	// Answers are kept per value of these placeholders, so that an
	// answer given to one caller is never served to another; the values
	// are hashed with the request, never kept or logged in clear.
	// Default: `["{http.request.host}","{http.request.header.Authorization}"]`.
	Scope []string `json:"scope,omitempty"`

	// Answers larger than this many bytes, head and body together, are
	// not kept. Default: `1048576` (1MiB), or max_memory when that is
	// less.
	MaxResponse int64 `json:"max_response,omitempty"`

	// The bytes of all answers kept for these upstreams with this
	// bound, and streamed in to keep; past it the oldest answers go
	// first. Answers survive a
	// config reload that keeps max_memory and the upstreams.
	// Default: `67108864` (64MiB).
	MaxMemory int64 `json:"max_memory,omitempty"`

	on       [numOutcomes]bool
	onStatus []statusMatch
	store    *fallbackStore
	ns       string // the store's name in fallbackStores
}

// Defaults of the fallback block.
var (
	defaultFallbackOn      = []string{"breaker_open", "pool_timeout", "connect_error", "tls_error", "reset", "timeout", "502", "503", "504"}
	defaultFallbackMethods = []string{"GET", "HEAD"}
	defaultFallbackStale   = time.Hour
)

// fallbackConditions are the words fallback's `on` takes besides
// statuses.
var fallbackConditions = map[string][]Outcome{
	"breaker_open":  {OutcomeBreakerOpen},
	"pool_timeout":  {OutcomePoolTimeout},
	"rate_limited":  {OutcomeRateLimited},
	"connect_error": {OutcomeConnectError, OutcomeConnectTimeout},
	"tls_error":     {OutcomeTLSError, OutcomeTLSTimeout},
	"reset":         {OutcomeReset},
	"timeout":       {OutcomeConnectTimeout, OutcomeTLSTimeout, OutcomeWriteTimeout, OutcomeReadTimeout, OutcomeAttemptTimeout, OutcomeTotalTimeout},
}

// fallbackStores keeps the answers of each reverse_proxy's fallback
// across config reloads, by its max_memory and the upstreams it proxies
// to (see upstreamSet): one provider's answers are never served for
// another's that happens to have the same path, and a reload that keeps
// the upstreams and max_memory keeps the answers.
var (
	fallbackStores = caddy.NewUsagePool()
	fallbackUsage  answers.Usage // of every fallback store, for the gauges
)

// fallbackStore is the kept answers of one set of upstreams, bounded by
// the max_memory of the transports that keep them (two reverse_proxy
// blocks with the same upstreams and max_memory share one).
type fallbackStore struct {
	*answers.Store
	// bytes of answers streaming in to be kept: they count toward the
	// bound too, so that many large answers at once stay within it
	capturing atomic.Int64
}

// Destruct implements caddy.Destructor.
func (s *fallbackStore) Destruct() error {
	s.Close()
	return nil
}

// provision fills the defaults and takes the store of the upstream set
// ns (see upstreamSet).
func (fb *Fallback) provision(ns string) error {
	if fb.Stale == 0 {
		fb.Stale = caddy.Duration(defaultFallbackStale)
	}
	if fb.On == nil {
		fb.On = defaultFallbackOn
	}
	if fb.Methods == nil {
		fb.Methods = defaultFallbackMethods
	}
	fb.Methods = slices.Clone(fb.Methods)
	for i, m := range fb.Methods {
		fb.Methods[i] = strings.ToUpper(m)
	}
	if fb.Scope == nil {
		fb.Scope = defaultKeyScope
	}
	if fb.MaxMemory == 0 {
		fb.MaxMemory = answers.DefaultMaxBytes
	}
	if fb.MaxResponse == 0 {
		fb.MaxResponse = min(defaultMaxResponse, max(fb.MaxMemory, 0))
	}
	fb.on, fb.onStatus = [numOutcomes]bool{}, nil
	for _, c := range fb.On {
		if outs, ok := fallbackConditions[c]; ok {
			for _, o := range outs {
				fb.on[o] = true
			}
			continue
		}
		sm, err := parseFailureMatch(c)
		if err != nil {
			return fmt.Errorf("on: %q is not a failure: a status (502), a class (5xx), or one of %s", c, fallbackConditionNames)
		}
		fb.onStatus = append(fb.onStatus, sm)
	}
	if err := fb.validate(); err != nil {
		return err
	}
	// a store of its own per bound, so that no transport's answers
	// take another's room
	fb.ns = strconv.FormatInt(fb.MaxMemory, 10) + " " + ns
	v, _, err := fallbackStores.LoadOrNew(fb.ns, func() (caddy.Destructor, error) {
		return &fallbackStore{Store: answers.New(answers.Config{MaxBytes: fb.MaxMemory, Usage: &fallbackUsage})}, nil
	})
	if err != nil {
		return err
	}
	fb.store = v.(*fallbackStore)
	return nil
}

func (fb *Fallback) validate() error {
	switch {
	case fb.Stale < 0:
		return fmt.Errorf("stale must be a positive duration, got %v", time.Duration(fb.Stale))
	case len(fb.Methods) == 0:
		return fmt.Errorf("methods: at least one method, e.g. GET HEAD")
	case fb.MaxResponse < 0:
		return fmt.Errorf("max_response must be a positive size, got %d", fb.MaxResponse)
	case fb.MaxMemory < 0:
		return fmt.Errorf("max_memory must be a positive size, got %d", fb.MaxMemory)
	}
	if err := sizesAgree(fb.MaxResponse, fb.MaxMemory); err != nil {
		return err
	}
	for _, m := range fb.Methods {
		if !isToken(m) {
			return fmt.Errorf("methods: %q is not an HTTP method", m)
		}
	}
	return nil
}

// cleanup lets go of the store; the answers stay for the next config
// with these upstreams and max_memory.
func (fb *Fallback) cleanup() {
	if fb.store != nil {
		_, _ = fallbackStores.Delete(fb.ns)
		fb.store = nil
	}
}

// falls reports whether a request that ended in o, with status (0: no
// answer), falls back.
func (fb *Fallback) falls(o Outcome, status int) bool {
	if o == OutcomeOK || o == OutcomeUpstreamStatus {
		for _, sm := range fb.onStatus {
			if sm.match(status) {
				return true
			}
		}
		return false
	}
	return fb.on[o]
}

// fallbackConditionNames lists the words of fallbackConditions, for
// error messages.
var fallbackConditionNames = strings.Join(slices.Sorted(maps.Keys(fallbackConditions)), ", ")

// The values of {http.resilient.fallback}, boxed once.
var (
	fallbackStale any = "stale"
	fallbackMiss  any = "miss"
)

// upstreamSet names the upstreams of the reverse_proxy h, for the
// fallback's store: its upstreams' dial addresses, sorted, or its
// dynamic upstreams' source.
func upstreamSet(h *reverseproxy.Handler) string {
	if h == nil {
		return ""
	}
	if h.DynamicUpstreamsRaw != nil {
		return "dynamic " + string(h.DynamicUpstreamsRaw)
	}
	dials := make([]string, 0, len(h.Upstreams))
	for _, u := range h.Upstreams {
		if u != nil {
			dials = append(dials, u.Dial)
		}
	}
	slices.Sort(dials)
	return strings.Join(dials, " ")
}

// fallbackState is what an exchange whose request the fallback applies
// to keeps: inline in the exchange, so that a healthy request pays no
// allocation for it beyond its kept answer.
type fallbackState struct {
	cfg       *Fallback
	key       answers.Key // of method, target and scope values
	answerKey answers.Key // of the answer: key, or its Vary values
	serve     bool        // the caller takes a kept answer (no no-cache, no-store, max-stale=0)
	keep      bool        // the caller lets its answer be kept (no no-store)
	maxAge    time.Duration

	// the answer as it streams to the client, while it may be kept
	capture bool
	head    []byte
	body    *[]byte // pooled
	counted int64   // bytes of it counted in the store's capturing
	vary    []string
	eof     bool
	expires time.Time
	result  any // {http.resilient.fallback}: stale, miss; nil: not looked up
}

// captureBufs are the buffers answers stream into while they may be
// kept: a healthy request does not allocate one.
var captureBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// fallbackBegin is the fallback step before the first attempt: whether
// the request's answer may be kept and a kept one served, and its key.
func (ex *exchange) fallbackBegin(fb *Fallback) {
	req := ex.req
	if !slices.Contains(fb.Methods, req.Method) {
		return
	}
	s := ex.fb
	s.cfg, s.serve, s.keep, s.maxAge = fb, true, true, time.Duration(fb.Stale)
	for _, v := range req.Header["Cache-Control"] {
		for d := range directives(v) {
			name, arg, _ := strings.Cut(d, "=")
			switch {
			case strings.EqualFold(name, "no-store"):
				s.serve, s.keep = false, false
			case strings.EqualFold(name, "no-cache"):
				s.serve = false
			case strings.EqualFold(name, "max-stale") && arg != "":
				if n, err := strconv.ParseInt(strings.Trim(arg, `"`), 10, 64); err == nil && n >= 0 {
					s.maxAge = min(s.maxAge, time.Duration(n)*time.Second)
					if n == 0 {
						s.serve = false
					}
				}
			}
		}
	}
	s.key = fallbackKey(req, fb.Scope, ex.repl)
}

// directives yields the comma-separated directives of a Cache-Control
// value, trimmed, without allocating.
func directives(v string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for v != "" {
			d, rest, _ := strings.Cut(v, ",")
			v = rest
			if d = strings.TrimSpace(d); d != "" && !yield(d) {
				return
			}
		}
	}
}

// fallbackDomain starts every fallback key's hash, so that no key of
// another use collides with one.
const fallbackDomain = "resilient fallback v1\x00"

// fallbackKey hashes req's method, target (after Caddy's rewrites) and
// scope values, each prefixed with its length.
func fallbackKey(req *http.Request, scope []string, repl *caddy.Replacer) answers.Key {
	var stack [512]byte
	b := append(stack[:0], fallbackDomain...)
	field := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	field(req.Method)
	field(req.URL.EscapedPath())
	field(req.URL.RawQuery)
	for _, sc := range scope {
		field(scopeValue(req, sc, repl))
	}
	return sha256.Sum256(b)
}

// scopeValue is the value of the scope placeholder sc, as the caller
// sent the request: the placeholders' view, before header_up changed the
// copy that goes upstream (a Host rewritten for the provider, a header
// taken out). A lone placeholder is looked up without building a
// string; outside Caddy's server (no replacer), req is all there is.
func scopeValue(req *http.Request, sc string, repl *caddy.Replacer) string {
	switch {
	case repl != nil && len(sc) > 2 && sc[0] == '{' && sc[len(sc)-1] == '}' && !strings.ContainsAny(sc[1:len(sc)-1], "{}"):
		v, _ := repl.GetString(sc[1 : len(sc)-1])
		return v
	case repl != nil:
		return repl.ReplaceAll(sc, "")
	case sc == "{http.request.host}":
		return req.Host
	}
	return sc
}

// keptStatuses are the answers worth serving again (RFC 9111's
// heuristically cacheable statuses a read can get).
func keptStatus(status int) bool {
	switch status {
	case 200, 203, 204, 300, 301, 404, 410:
		return true
	}
	return false
}

// fallbackAnswered is the fallback's look at the answer about to go to
// the client: when it may be kept, its head is noted now (before Caddy's
// header_down changes it) and its body will be captured as it streams.
func (ex *exchange) fallbackAnswered(res *http.Response) {
	s := ex.fb
	if !s.keep || !keptStatus(res.StatusCode) || res.ContentLength > s.cfg.MaxResponse {
		return
	}
	h := res.Header
	if len(h["Set-Cookie"]) > 0 {
		return // another caller's session
	}
	stale := time.Duration(s.cfg.Stale)
	for _, v := range h["Cache-Control"] {
		for d := range directives(v) {
			name, arg, _ := strings.Cut(d, "=")
			switch {
			case strings.EqualFold(name, "no-store"):
				return
			case strings.EqualFold(name, "stale-if-error"):
				n, err := strconv.ParseInt(strings.Trim(arg, `"`), 10, 64)
				if err != nil || n < 0 {
					return // a value it cannot read: not kept rather than kept too long
				}
				stale = min(stale, time.Duration(n)*time.Second)
			}
		}
	}
	if stale <= 0 {
		return
	}
	vary, ok := varyNames(h)
	if !ok {
		return // Vary: *
	}
	s.answerKey = s.key
	if len(vary) > 0 {
		// kept under the values of the headers it varies on, as the
		// upstream got them; the request's own key will say which
		// headers those are, once the answer is kept
		s.vary, s.answerKey = vary, varyKey(s.key, vary, ex.req.Header)
	}
	head, ok := encodeKeptHead(res.StatusCode, h)
	if !ok || int64(len(head)) > s.cfg.MaxResponse || !s.count(int64(len(head))) {
		s.drop()
		return
	}
	s.head, s.expires, s.capture = head, time.Now().Add(stale), true
	s.body = captureBufs.Get().(*[]byte)
	*s.body = (*s.body)[:0]
}

// fallbackCapture adds p, read from the answer's body, to what will be
// kept; past max_response (head and body), or when the answers
// streaming in at once would pass max_memory, the answer is not kept.
func (s *fallbackState) fallbackCapture(p []byte, eof bool) {
	if !s.capture {
		return
	}
	if int64(len(s.head)+len(*s.body)+len(p)) > s.cfg.MaxResponse || !s.count(int64(len(p))) {
		s.drop()
		return
	}
	*s.body = append(*s.body, p...)
	s.eof = s.eof || eof
}

// count adds n bytes to what streams in to be kept, if that stays
// within max_memory.
func (s *fallbackState) count(n int64) bool {
	st := s.cfg.store
	if st.capturing.Add(n) > s.cfg.MaxMemory {
		st.capturing.Add(-n)
		return false
	}
	s.counted += n
	return true
}

// drop stops capturing the answer; nothing is kept.
func (s *fallbackState) drop() {
	if s.body != nil {
		if cap(*s.body) <= 1<<20 {
			captureBufs.Put(s.body)
		}
		s.body = nil
	}
	if s.counted != 0 {
		s.cfg.store.capturing.Add(-s.counted)
		s.counted = 0
	}
	s.capture, s.head, s.vary = false, nil, nil
}

// fallbackKeep keeps the answer whose body ended as end says: only one
// read to its end, never one cut short.
func (ex *exchange) fallbackKeep(end Outcome) {
	s := ex.fb
	if !s.capture {
		return
	}
	if end == OutcomeOK && s.eof {
		st := s.cfg.store
		if s.vary != nil {
			// the answers under this request's key vary on these
			// headers: the marker says which, for as long as any answer
			// may be kept
			st.Put(s.key, encodeVary(s.vary), nil, time.Now().Add(time.Duration(s.cfg.Stale)))
		}
		st.Put(s.answerKey, s.head, *s.body, s.expires)
	}
	s.drop()
}

// fallbackLookup finds the kept answer of a request that would end in
// a failure (o, with the upstream's status or 0) that falls back, no
// older than allowed; ok is false when none is, or when the failure
// does not fall back.
func (ex *exchange) fallbackLookup(o Outcome, status int) (keptAnswer, bool) {
	s := ex.fb
	if s.cfg == nil || !s.serve || ex.keyed != nil || !s.cfg.falls(o, status) {
		return keptAnswer{}, false
	}
	a, ok := lookupKept(s.cfg.store, s.key, ex.req.Header, time.Now(), s.maxAge)
	if !ok {
		s.result = fallbackMiss
		ex.up.m.fellBack(fallbackResultMiss)
		return keptAnswer{}, false
	}
	s.result = fallbackStale
	ex.up.m.fellBack(fallbackResultStale)
	return a, true
}

// serveKept ends the exchange with the kept answer a (outcome stale);
// what the caller may assume of the upstream is what the tries tell.
func (ex *exchange) serveKept(a keptAnswer) *http.Response {
	a.header.Set("Age", strconv.FormatInt(int64(a.age/time.Second), 10))
	length := a.header.Get("Content-Length")
	if ex.req.Method == http.MethodHead {
		a.body = nil
	}
	ex.outcome = OutcomeStale
	res := ex.answerHere(a.status, a.header, a.body, 0)
	if ex.req.Method == http.MethodHead {
		// a HEAD tells the length of the body a GET would get, or
		// nothing when the upstream did not say
		res.Header.Del("Content-Length")
		res.ContentLength = -1
		if length != "" {
			res.Header.Set("Content-Length", length)
			res.ContentLength, _ = strconv.ParseInt(length, 10, 64)
		}
	}
	return res
}

// keptAnswer is a kept answer as it is served.
type keptAnswer struct {
	status int
	header http.Header
	body   []byte
	age    time.Duration
}

// lookupKept returns the answer kept under key, or under the key of the
// values of the headers it varies on, when it is at most maxAge old.
func lookupKept(st *fallbackStore, key answers.Key, reqHeader http.Header, now time.Time, maxAge time.Duration) (keptAnswer, bool) {
	v, kept, ok := st.Get(key)
	if !ok {
		return keptAnswer{}, false
	}
	if vary, isMarker := decodeVary(v); isMarker {
		if v, kept, ok = st.Get(varyKey(key, vary, reqHeader)); !ok {
			return keptAnswer{}, false
		}
	}
	age := now.Sub(kept)
	if age > maxAge {
		return keptAnswer{}, false
	}
	a, ok := decodeKept(v)
	a.age = max(age, 0)
	return a, ok
}

// A kept value starts with its kind: an answer (status, header lines,
// then the body) or a Vary marker (the names of the request headers the
// answers under this key vary on).
const (
	keptAnswerKind = 'a'
	keptVaryKind   = 'v'
	maxKeptLines   = 256
)

// encodeKeptHead encodes status and h (the hop-by-hop headers too:
// Caddy strips them from every answer it serves, a kept one too); ok is
// false for a header too hostile to keep (too many lines, or a name or
// value no answer may carry).
func encodeKeptHead(status int, h http.Header) ([]byte, bool) {
	b := make([]byte, 0, 256)
	b = append(b, keptAnswerKind)
	b = binary.BigEndian.AppendUint16(b, uint16(status))
	lines := 0
	for name, vs := range h {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, false
		}
		for _, v := range vs {
			if lines++; lines > maxKeptLines || !httpguts.ValidHeaderFieldValue(v) {
				return nil, false
			}
			b = appendField(b, name)
			b = appendField(b, v)
		}
	}
	// the end of the head: an empty name
	return binary.AppendUvarint(b, 0), true
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeKept reads an answer that encodeKeptHead and the body made.
func decodeKept(v []byte) (keptAnswer, bool) {
	if len(v) < 3 || v[0] != keptAnswerKind {
		return keptAnswer{}, false
	}
	a := keptAnswer{status: int(binary.BigEndian.Uint16(v[1:3])), header: http.Header{}}
	v = v[3:]
	for {
		name, rest, ok := readField(v)
		if !ok {
			return keptAnswer{}, false
		}
		if name == "" {
			a.body = rest
			return a, a.status >= 100 && a.status <= 599
		}
		value, rest2, ok := readField(rest)
		if !ok {
			return keptAnswer{}, false
		}
		a.header[name] = append(a.header[name], value)
		v = rest2
	}
}

func readField(v []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)-k) {
		return "", nil, false
	}
	return string(v[k : k+int(n)]), v[k+int(n):], true
}

// varyNames returns the request headers h's Vary names, canonical and
// sorted; ok is false for Vary: *.
func varyNames(h http.Header) ([]string, bool) {
	vs := h["Vary"]
	if len(vs) == 0 {
		return nil, true
	}
	var names []string
	for _, v := range vs {
		for d := range directives(v) {
			if d == "*" {
				return nil, false
			}
			names = append(names, http.CanonicalHeaderKey(d))
		}
	}
	slices.Sort(names)
	return slices.Compact(names), true
}

func encodeVary(names []string) []byte {
	b := []byte{keptVaryKind}
	for _, n := range names {
		b = appendField(b, n)
	}
	return b
}

func decodeVary(v []byte) ([]string, bool) {
	if len(v) == 0 || v[0] != keptVaryKind {
		return nil, false
	}
	var names []string
	for v = v[1:]; len(v) > 0; {
		n, rest, ok := readField(v)
		if !ok {
			return nil, false
		}
		names, v = append(names, n), rest
	}
	return names, true
}

// varyKey is the key of the answer under key for the values h has of
// the headers names.
func varyKey(key answers.Key, names []string, h http.Header) answers.Key {
	var scratch [512]byte // most requests' values fit: no allocation
	b := append(scratch[:0], key[:]...)
	for _, n := range names {
		b = appendField(b, n)
		vs := h.Values(n)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = appendField(b, v)
		}
	}
	return sha256.Sum256(b)
}

// fallbackResult is how a fallback look-up ended, as fallback_total
// counts it.
type fallbackResult uint8

const (
	fallbackResultStale fallbackResult = iota
	fallbackResultMiss
	numFallbackResults
)

var fallbackResultNames = [numFallbackResults]string{"stale", "miss"}

// fallbackOptions are the options of the fallback block.
var fallbackOptions = []string{"stale", "on", "methods", "scope", "max_response", "max_memory"}

func parseFallback(d *caddyfile.Dispenser) (*Fallback, error) {
	fb := new(Fallback)
	size := func(opt string) (int64, error) {
		v, err := oneArg(d, "fallback", opt)
		if err != nil {
			return 0, err
		}
		n, perr := humanize.ParseBytes(v)
		if perr != nil || n == 0 || n > 1<<40 {
			return 0, d.Errf("fallback: %s must be a positive size such as 1MiB, got %q", opt, v)
		}
		return int64(n), nil
	}
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "stale":
			fb.Stale, err = duration(d, "fallback", opt, false)
		case "on":
			args, err := manyArgs(d, "fallback", opt, "failures such as breaker_open timeout 503")
			if err != nil {
				return err
			}
			for _, a := range args {
				if _, ok := fallbackConditions[a]; ok {
					continue
				}
				if _, perr := parseFailureMatch(a); perr != nil {
					return d.Errf("fallback: on: %q is not a failure: a status (502), a class (5xx), or one of %s",
						a, fallbackConditionNames)
				}
			}
			fb.On = args
		case "methods":
			args, err := manyArgs(d, "fallback", opt, "HTTP methods such as GET HEAD")
			if err != nil {
				return err
			}
			for i, m := range args {
				if !isToken(m) {
					return d.Errf("fallback: methods: %q is not an HTTP method", m)
				}
				args[i] = strings.ToUpper(m)
			}
			fb.Methods = args
		case "scope":
			fb.Scope, err = manyArgs(d, "fallback", opt, "placeholders such as {http.request.header.Authorization}")
		case "max_response":
			fb.MaxResponse, err = size(opt)
		case "max_memory":
			fb.MaxMemory, err = size(opt)
		default:
			return unknownOption(d, "fallback", opt, fallbackOptions)
		}
		return err
	})
	if err != nil {
		return fb, err
	}
	if err := sizesAgree(fb.MaxResponse, fb.MaxMemory); err != nil {
		return nil, d.Errf("fallback: %v", err)
	}
	return fb, nil
}
