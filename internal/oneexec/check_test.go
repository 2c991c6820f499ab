package oneexec

import (
	"crypto/sha256"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The check is the proof: each invariant must fail on the history that
// breaks it, and pass on the one that keeps it.

var t0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

const key = "Bearer tenant-a|key-1"

var (
	bodyA = sha256.Sum256([]byte("a"))
	bodyB = sha256.Sum256([]byte("b"))
)

// execution n of key, sent by gateway gw for send, answering status with
// answer bytes, from ms to ms+10.
func execution(n int64, gw, send string, status int, answer string, ms int) Execution {
	h := http.Header{HeaderExec: {strconv.FormatInt(n, 10)}, "X-Up-List": {"one", "two"}, "Set-Cookie": {"s=1", "t=2"}}
	return Execution{N: n, Send: send, Gateway: gw, Key: key, Body: bodyA, BodyLen: 1, Start: at(ms), End: at(ms + 10),
		Status: status, Header: h, Answer: sha256.Sum256([]byte(answer)), AnswerLen: len(answer), Delivered: true,
		Acting: !releasing(status)}
}

// answer is a client's send that got execution e's answer as it stands,
// a replay or not, with the gateway's verdict headers.
func answer(id, gw string, e Execution, replayed bool, ms int) *Send {
	h := e.Header.Clone()
	h.Set(HeaderOutcome, "ok")
	h.Set(HeaderExecuted, "yes")
	if releasing(e.Status) {
		h.Set(HeaderOutcome, "upstream_status")
		h.Set(HeaderExecuted, "no")
	}
	if replayed {
		h.Set("Idempotent-Replayed", "true")
		h.Set(HeaderOutcome, "replayed")
	}
	return &Send{ID: id, Key: key, Body: bodyA, BodyLen: 1, Gateway: gw, Start: at(ms), End: at(ms + 5),
		Status: e.Status, Header: h, Answer: e.Answer, AnswerLen: e.AnswerLen}
}

// own is the gateway's own answer to a send.
func own(id string, status int, outcome, executed string, extra http.Header, ms int) *Send {
	h := http.Header{HeaderOutcome: {outcome}, HeaderExecuted: {executed}}
	for k, v := range extra {
		h[k] = v
	}
	return &Send{ID: id, Key: key, Body: bodyA, BodyLen: 1, Gateway: "a", Start: at(ms), End: at(ms + 5), Status: status, Header: h}
}

func TestCheck(t *testing.T) {
	first := execution(1, "a", "s1", 200, "answer one", 0)
	second := execution(2, "b", "s2", 201, "answer two", 100)
	released := execution(1, "a", "s1", 503, "busy", 0)
	large := execution(1, "a", "s1", 200, strings.Repeat("x", 2<<20), 0)
	reset := execution(1, "a", "s1", 0, "", 0)
	reset.Delivered, reset.Header, reset.AnswerLen = false, nil, 0
	// the same request, sent again by the gateway: at once, and after
	retried := execution(2, "a", "s1", 200, "answer two", 5)
	after := execution(2, "a", "s1", 200, "answer two", 20)
	// its gateway gave up on it mid-body: the upstream read nothing whole
	cutShort := reset
	cutShort.Body, cutShort.BodyLen, cutShort.BodyErr = sha256.Sum256(nil), 0, "unexpected EOF"
	window := []Window{{From: at(50), To: at(150), Why: "redis down"}}
	withWindow := func(in checkInput) checkInput { in.windows = window; return in }

	for _, c := range []struct {
		name string
		in   checkInput
		want []string // the kinds of violations it has; none for none
	}{
		{"one execution, its answer and a replay", checkInput{
			execs: []Execution{first},
			sends: []*Send{answer("s1", "a", first, false, 0), answer("s2", "b", first, true, 50)},
		}, nil},
		{"a key executed twice", checkInput{
			execs: []Execution{first, second},
			sends: []*Send{answer("s1", "a", first, false, 0), answer("s2", "b", second, false, 100)},
		}, []string{vTwice}},
		{"executed again after the upstream said it did nothing", checkInput{
			execs: []Execution{released, second},
			sends: []*Send{answer("s1", "a", released, false, 0), answer("s2", "b", second, false, 100)},
		}, nil},
		{"twice on two instances while Redis was down", withWindow(checkInput{
			execs: []Execution{first, second},
			sends: []*Send{answer("s1", "a", first, false, 0), answer("s2", "b", second, false, 100)},
		}), nil},
		{"twice on one instance while Redis was down", withWindow(checkInput{
			execs: []Execution{first, func() Execution { e := second; e.Gateway = "a"; return e }()},
			sends: []*Send{answer("s1", "a", first, false, 0), answer("s2", "a", second, false, 100)},
		}), []string{vTwice}},
		{"a replay whose body differs", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send { s := answer("s2", "b", first, true, 50); s.Answer[0] ^= 1; return s }()},
		}, []string{vDiffers}},
		{"a replay that lost a header value", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send {
				s := answer("s2", "b", first, true, 50)
				s.Header["Set-Cookie"] = []string{"s=1"}
				return s
			}()},
		}, []string{vDiffers}},
		{"a replay with a header of the upstream's that its execution did not set", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send { s := answer("s2", "b", first, true, 50); s.Header.Set("X-Nonce", "n"); return s }()},
		}, []string{vDiffers}},
		{"a replay with another status", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send { s := answer("s2", "b", first, true, 50); s.Status = 201; return s }()},
		}, []string{vDiffers}},
		{"the answer of another body", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send { s := answer("s2", "b", first, true, 50); s.Body = bodyB; return s }()},
		}, []string{vForeign}},
		{"the answer of another key", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send { s := answer("s2", "b", first, true, 50); s.Key = "Bearer tenant-b|key-1"; return s }()},
		}, []string{vForeign}},
		{"another request's answer, not called a replay", checkInput{
			execs: []Execution{first},
			sends: []*Send{answer("s2", "b", first, false, 50)},
		}, []string{vReplay}},
		{"a replay of a 503", checkInput{
			execs: []Execution{released},
			sends: []*Send{func() *Send {
				s := answer("s2", "b", released, true, 50)
				s.Header.Set(HeaderExecuted, "yes")
				return s
			}()},
		}, []string{vReplay}},
		{"a replay of an answer past max_response", checkInput{
			execs: []Execution{large},
			sends: []*Send{answer("s2", "b", large, true, 50)},
		}, []string{vReplay}},
		{"a replay said executed maybe", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send { s := answer("s2", "b", first, true, 50); s.Header.Set(HeaderExecuted, "maybe"); return s }()},
		}, []string{vGateway}},
		{"the upstream's 503 said executed yes", checkInput{
			execs: []Execution{released},
			sends: []*Send{func() *Send {
				s := answer("s1", "a", released, false, 0)
				s.Header.Set(HeaderExecuted, "yes")
				return s
			}()},
		}, []string{vGateway}},
		{"an answer naming no execution", checkInput{
			sends: []*Send{answer("s2", "b", first, true, 50)},
		}, []string{vNoExec}},
		{"409 used after an answer too large to keep", checkInput{
			execs: []Execution{large},
			sends: []*Send{own("s2", 409, "key_conflict", "yes", nil, 50)},
		}, nil},
		{"409 used after an answer that could be kept", checkInput{
			execs: []Execution{first},
			sends: []*Send{own("s2", 409, "key_conflict", "yes", nil, 50)},
		}, []string{vGateway}},
		{"409 in flight", checkInput{
			execs: []Execution{first},
			sends: []*Send{own("s2", 409, "key_conflict", "no", http.Header{"Retry-After": {"1"}}, 5)},
		}, nil},
		{"422 after another body executed", checkInput{
			execs: []Execution{first},
			sends: []*Send{func() *Send { s := own("s2", 422, "key_mismatch", "no", nil, 50); s.Body = bodyB; return s }()},
		}, nil},
		{"422 for the body that executed", checkInput{
			execs: []Execution{first},
			sends: []*Send{own("s2", 422, "key_mismatch", "no", nil, 50)},
		}, []string{vGateway}},
		{"a replayed 502 after a reset", checkInput{
			execs: []Execution{reset},
			sends: []*Send{own("s2", 502, "replayed", "maybe", http.Header{"Idempotent-Replayed": {"true"}}, 50)},
		}, nil},
		{"a replayed 504 after its gateway gave up mid-body", checkInput{
			execs: []Execution{cutShort},
			sends: []*Send{own("s1", 504, "total_timeout", "maybe", nil, 0), own("s2", 504, "replayed", "maybe", http.Header{"Idempotent-Replayed": {"true"}}, 50)},
		}, nil},
		{"422 for the body of a request cut short", checkInput{
			execs: []Execution{cutShort},
			sends: []*Send{own("s1", 504, "total_timeout", "maybe", nil, 0), own("s2", 422, "key_mismatch", "no", nil, 50)},
		}, []string{vGateway}},
		{"a replayed 504 though the upstream answered", checkInput{
			execs: []Execution{first},
			sends: []*Send{own("s2", 504, "replayed", "maybe", http.Header{"Idempotent-Replayed": {"true"}}, 50)},
		}, []string{vGateway}},
		{"executed no, though it acted", checkInput{
			execs: []Execution{first},
			sends: []*Send{own("s1", 503, "breaker_open", "no", nil, 0)},
		}, []string{vGateway}},
		{"a keyed request at the upstream twice at once", checkInput{
			execs: []Execution{released, retried},
			sends: []*Send{answer("s1", "a", retried, false, 0)},
		}, []string{vHedged}},
		{"a keyed request sent again once the upstream's 503 went out, before its body ended", checkInput{
			execs: []Execution{func() Execution { e := released; e.Told = at(4); return e }(), retried},
			sends: []*Send{answer("s1", "a", retried, false, 0)},
		}, nil},
		{"a keyed request sent again after the upstream said it did nothing", checkInput{
			execs: []Execution{released, after},
			sends: []*Send{answer("s1", "a", after, false, 0)},
		}, nil},
		{"a keyed request sent again after it acted", checkInput{
			execs: []Execution{reset, after},
			sends: []*Send{answer("s1", "a", after, false, 0)},
		}, []string{vTwice, vHedged}},
		{"a 200 of the gateway's own", checkInput{
			sends: []*Send{own("s1", 200, "ok", "yes", nil, 0)},
		}, []string{vUnexpected}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.in.maxResponse = 1 << 20
			rep := check(c.in)
			got := slices.Sorted(maps.Keys(rep.ViolationsByKind()))
			if want := slices.Sorted(slices.Values(c.want)); !slices.Equal(got, want) {
				t.Errorf("violations of kinds %q, want %q: %v", got, want, rep.Violations)
			}
		})
	}
}
