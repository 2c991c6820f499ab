package resilient

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddy-resilient/resilient/idempotency"
)

// The idempotency step of an exchange (SPEC §13): before the first
// attempt, keyBegin looks the request's key up and either lets the
// request go (it is the first with its key: it holds the key's claim)
// or answers it at once, nothing sent; once the request is over,
// keyEnd keeps its answer for the repeats, or releases the key when the
// upstream provably did nothing.

// keyed is what an exchange that holds an idempotency key's claim keeps.
type keyed struct {
	ix     *Idempotency
	claim  idempotency.Claim
	hash   *idempotency.Hasher     // the request's fingerprint, fed as its body streams
	fp     idempotency.Fingerprint // its sum, once summed
	summed bool

	// whether some attempt may have made the upstream act: bytes of it
	// were written and no answer said otherwise (408 425 429 503)
	acted bool

	// the answer as it streams to the first client
	status  int
	header  http.Header
	body    []byte
	trailer http.Header // the answer's, filled in as its body ends
	large   bool        // over max_response: only status and headers are kept
	eof     bool        // the answer's body was read to its end
	ended   bool        // the claim was kept or released
	carried bool        // its client was answered; a carrier ends the claim
}

// releasingStatus reports whether an answer with status says the
// upstream did nothing, so that the key comes free again.
func releasingStatus(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return true
	}
	return false
}

// The values of {http.resilient.idempotency}, boxed once.
var (
	keyNotManaged any = ""
	keyNew        any = "new"
	keyReleased   any = "released"
	keyReplayed   any = "replayed"
	keyConflict   any = "conflict"
	keyMismatch   any = "mismatch"
	keyInvalid    any = "invalid"
)

// setKeyed sets the placeholder, and what the log says of the key.
func (ex *exchange) setKeyed(v any) {
	ex.keyVerdict, ex.keyValue = v.(string), v
}

// keyBegin is the idempotency step before the first attempt. When the
// request is not to be sent, it returns its answer and done.
func (ex *exchange) keyBegin(ix *Idempotency) (res *http.Response, err error, done bool) {
	req := ex.req
	if !slices.Contains(ix.Methods, req.Method) {
		ex.setKeyed(keyNotManaged)
		return nil, nil, false
	}
	values := req.Header.Values(ix.header)
	if len(values) == 0 {
		if !ix.Require {
			ex.setKeyed(keyNotManaged)
			return nil, nil, false
		}
		return ex.keyProblem(OutcomeKeyInvalid, keyInvalid, executedNo, ix.header+" is missing",
			"This operation requires an "+ix.header+" header: a client-chosen key that makes the request safe to repeat. Nothing was sent.", 0), nil, true
	}
	key, perr := idempotency.ParseKey(values)
	if perr != nil {
		return ex.keyProblem(OutcomeKeyInvalid, keyInvalid, executedNo, ix.header+" is invalid", perr.Error()+". Nothing was sent.", 0), nil, true
	}
	scope := make([]string, len(ix.Scope))
	if ex.repl != nil {
		for i, s := range ix.Scope {
			scope[i] = ex.repl.ReplaceAll(s, "")
		}
	}
	k := idempotency.NewKey(scope, key)
	target := req.URL.RequestURI()
	// a repeat's body is read (hashed, never kept) only when a completed
	// record is to be compared with it
	fp := func() (idempotency.Fingerprint, error) {
		if held := ex.held; held != nil {
			return held.sum, held.err
		}
		h := idempotency.NewHasher(req.Method, target)
		if b := ex.req.Body; b != nil && b != http.NoBody {
			// the fingerprint covers HashedBody bytes, and whether there
			// are more: one byte past it tells
			if _, err := io.CopyN(h, b, idempotency.HashedBody+1); err != nil && err != io.EOF {
				return idempotency.Fingerprint{}, err
			}
		}
		return h.Sum(), nil
	}
	// wait auto: as long as the repeat's own deadline allows (total,
	// capped by the caller's); the first is carried to its answer for
	// at most complete_within, which bounds a wait without a deadline
	left := time.Duration(ix.CompleteWithin)
	if totalAt := ex.totalDeadline(); !totalAt.IsZero() {
		left = time.Until(totalAt)
	}
	wait := left
	if ix.Wait != nil {
		wait = min(time.Duration(*ix.Wait), left)
	}
	r, berr := ix.store.Begin(req.Context(), k, idempotency.Params{TTL: time.Duration(ix.TTL), Wait: wait, Waiting: ex.holdBody}, fp)
	if berr == nil && r.Verdict != idempotency.New {
		// a repeat whose client left while it waited is answered
		// nothing: its body may have been there to hash all the same
		if cerr := req.Context().Err(); cerr != nil {
			berr = cerr
		}
	}
	if berr != nil {
		// the client left while it waited, or its body failed
		ex.setKeyed(keyNotManaged)
		at := &ex.first.res
		*at = attemptResult{outcome: OutcomeCanceled, err: berr, neverSent: true}
		ex.tries = append(ex.tries, try{outcome: at.outcome})
		res, err := ex.finish(nil, at)
		return res, err, true
	}
	switch r.Verdict {
	case idempotency.New:
		if held := ex.held; held != nil && (held.lost || held.err != nil) {
			// it waited, and the first was released: it is to be sent in
			// the first's place, but its body is gone (longer than
			// max_body, read to see its client leave): nothing sent, the
			// key free for it to repeat at once
			r.Claim.Release()
			return ex.keyProblem(OutcomeKeyConflict, keyConflict, executedNo, "A request with this "+ix.header+" was in flight",
				"The first request with this key did nothing upstream, and this one, which waited for it, could not be sent in its place. Nothing was sent: repeat it with the same key.", 1), nil, true
		}
		ex.keyed = &keyed{ix: ix, claim: r.Claim, hash: idempotency.NewHasher(req.Method, target)}
		// once sent, the request goes on if its client leaves: its
		// answer is kept for the repeat (it still ends by total)
		ex.ctx = context.WithoutCancel(req.Context())
		ex.setKeyed(keyNew)
		return nil, nil, false
	case idempotency.Replay:
		return ex.replay(r.Answer), nil, true
	case idempotency.InFlight:
		return ex.keyProblem(OutcomeKeyConflict, keyConflict, executedNo, "A request with this "+ix.header+" is in flight",
			"The first request with this key has not ended yet, and this one was not sent. Repeat it with the same key after Retry-After to get the first one's answer.", 1), nil, true
	case idempotency.Used:
		if a := r.Answer; a != nil && a.Outcome != "" {
			// the first got no answer: what the upstream did is not known
			return ex.keyProblem(OutcomeKeyConflict, keyConflict, executedMaybe, "This "+ix.header+" was used",
				"The first request with this key was sent, in part or whole, and the upstream gave no answer ("+a.Outcome+"): it may have acted. Do not send it again with a new key: check with the upstream.", 0), nil, true
		}
		return ex.keyProblem(OutcomeKeyConflict, keyConflict, executedYes, "This "+ix.header+" was used",
			"The first request with this key was executed, but its answer was not kept (larger than the gateway keeps, or not one a replay could give back whole). Do not send it again with a new key: check with the upstream.", 0), nil, true
	default: // Mismatch
		return ex.keyProblem(OutcomeKeyMismatch, keyMismatch, executedNo, ix.header+" reused with another request",
			"This key was used with another method, target or body, and this request was not sent. Use a new key for a new request.", 0), nil, true
	}
}

// keyProblem answers the request itself with a problem+json of status
// o.StatusCode(); nothing is sent. exec is what the caller may assume of
// the key's first request; retryAfter, when positive, is also sent as
// Retry-After.
func (ex *exchange) keyProblem(o Outcome, verdict any, exec executed, title, detail string, retryAfter int64) *http.Response {
	status := o.StatusCode()
	ex.answered(o, verdict, exec)
	h := http.Header{"Content-Type": {"application/problem+json"}}
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(retryAfter, 10))
	}
	body := problemJSON(ex.problem(status, problemTypeDraft, title, detail, retryAfter))
	return ex.answerHere(status, h, body, time.Duration(retryAfter)*time.Second)
}

// replay answers the request with a record's answer, nothing sent: the
// upstream's status, headers and body as it gave them, or, for a
// request that got no answer after bytes of it were sent, the 502/504 its
// first client got, as a problem.
func (ex *exchange) replay(a *idempotency.Answer) *http.Response {
	h, body := a.Header, a.Body
	if h == nil {
		h = http.Header{}
	}
	if a.Outcome != "" {
		ex.answered(OutcomeReplayed, keyReplayed, executedMaybe)
		body = problemJSON(ex.problem(a.Status, problemTypeBase+a.Outcome, "Upstream call failed: "+a.Outcome,
			"The answer of an earlier request with this "+ex.t.Idempotency.header+": it was sent, and the upstream gave no answer ("+
				a.Outcome+"). The upstream may have acted on it; the gateway does not know, and will answer the same to every repeat: check with the upstream.", 0))
		h = http.Header{"Content-Type": {"application/problem+json"}}
	} else {
		ex.answered(OutcomeReplayed, keyReplayed, executedYes)
	}
	h.Set("Idempotent-Replayed", "true")
	// {http.resilient.retry_after} says what the first one was told
	ra, _ := parseRetryAfter(h.Get("Retry-After"), time.Now())
	return ex.answerHere(a.Status, h, body, ra)
}

// answered notes how the transport answers the request itself: its
// outcome, the idempotency verdict and what the caller may assume.
func (ex *exchange) answered(o Outcome, verdict any, exec executed) {
	ex.setKeyed(verdict)
	ex.outcome, ex.exec, ex.execFixed = o, exec, true
}

// answerHere ends the exchange with an answer the transport gives
// itself (see answered): placeholders, the log entry and the metrics,
// as for any other.
func (ex *exchange) answerHere(status int, h http.Header, body []byte, retryAfter time.Duration) *http.Response {
	at := &ex.first.res
	*at = attemptResult{outcome: ex.outcome, status: status, neverSent: true, retryAfter: max(retryAfter, 0)}
	ex.final, ex.took = at, time.Since(ex.start)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	ex.done(nil)
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       ex.req,
	}
}

// note records how an attempt ended: whether it may have made the
// upstream act. One canceled once bytes of it were written (its client
// gave up in the middle of its upload) may have: the upstream got a
// request, cut, as after a reset.
func (k *keyed) note(at *attemptResult) {
	if at.neverSent || (at.status != 0 && releasingStatus(at.status)) {
		return
	}
	k.acted = true
}

// keyAnswered is keyEnd's first half for a request that got an answer:
// one that says the upstream did nothing releases the key at once;
// otherwise its status and headers are noted, and its body is kept as
// it streams (see capture).
func (ex *exchange) keyAnswered(res *http.Response) {
	k := ex.keyed
	if releasingStatus(res.StatusCode) && !k.acted {
		ex.keyRelease()
		return
	}
	k.status, k.header, k.trailer = res.StatusCode, res.Header.Clone(), res.Trailer
}

// capture keeps p, read from the answer's body, for the record.
func (k *keyed) capture(p []byte) {
	if k.large || k.ended {
		return
	}
	if int64(len(k.body)+len(p)) > k.ix.MaxResponse {
		k.large, k.body = true, nil
		return
	}
	k.body = append(k.body, p...)
}

// keyFailed ends the claim of a request that got no answer: when no
// attempt may have made the upstream act, the key is released; else
// the record keeps the outcome, and a repeat gets the same 502/504.
func (ex *exchange) keyFailed(o Outcome) {
	k := ex.keyed
	if k.carried {
		return // the upstream's answer will come, and be kept
	}
	if !k.acted {
		ex.keyRelease()
		return
	}
	k.ended = true
	status := o.StatusCode()
	if o == OutcomeCanceled {
		// its own client is gone; a repeat is told what a cut request
		// gets, not Caddy's 499 for a client that left
		status = http.StatusBadGateway
	}
	k.claim.Keep(ex.keyFingerprint(), idempotency.Answer{Status: status, Outcome: o.String(), Whole: true})
}

// keyDone ends the claim of a request whose answer's body ended as end
// says: the answer is kept whole when it was read to its end and within
// max_response, else its status and headers only.
func (ex *exchange) keyDone(end Outcome) {
	k := ex.keyed
	if k.ended {
		return
	}
	k.ended = true
	if end != OutcomeOK {
		// the upstream cut its answer, or went silent in it: what it did
		// is not known, and the repeat is told so (executed maybe), as
		// for an answer that never came
		k.claim.Keep(ex.keyFingerprint(), idempotency.Answer{Status: end.StatusCode(), Outcome: end.String(), Whole: true})
		k.body = nil
		return
	}
	// an answer with trailers is not kept whole: the record has no room
	// for them, and a replay without them would not be the answer
	whole := k.eof && !k.large && len(k.trailer) == 0
	a := idempotency.Answer{Status: k.status, Header: k.header, Whole: whole}
	if whole {
		a.Body = k.body
	}
	k.claim.Keep(ex.keyFingerprint(), a)
	k.body = nil
}

// keyRelease frees the key: the upstream provably did nothing.
func (ex *exchange) keyRelease() {
	k := ex.keyed
	if k.ended {
		return
	}
	k.ended = true
	k.claim.Release()
	ex.setKeyed(keyReleased)
}

// keyFingerprint returns the fingerprint of the request. When the
// upstream answered before reading the whole body, the rest is read
// (hashed only) now, as far as the fingerprint covers (HashedBody, and
// one byte to tell whether there is more): a repeat of the same request
// gets the same fingerprint however much of the first one's body the
// upstream read. A body of known length whose bytes all went out is
// whole (complete), even before net/http's last read saw its end: the
// drain takes the body from the attempt, and net/http, its read failed,
// would drop the connection the answer streams on.
func (ex *exchange) keyFingerprint() idempotency.Fingerprint {
	k := ex.keyed
	if k.summed {
		return k.fp
	}
	h, b := k.hash, ex.body
	if b == nil {
		k.fp, k.summed = h.Sum(), true
		return k.fp
	}
	defer b.letClose() // held open for this (see finish)
	// the hash is fed by the body's readers, under its lock
	full := false
	b.locked(func() { full = h.Full() })
	if !full && !b.complete() && !b.drainHash(idempotency.HashedBody+1) {
		b.locked(func() { full = h.Full() })
		if !full {
			// the client's body failed before the fingerprint was
			// whole: no repeat can be compared with it
			k.fp, k.summed = idempotency.Unverifiable, true
			return k.fp
		}
	}
	b.locked(func() { k.fp = h.Sum() })
	k.summed = true
	return k.fp
}

// drainAnswer reads the rest of an answer whose client stopped reading
// (it left): up to max_response, so that the repeat gets it.
func (b *responseBody) drainAnswer() {
	k := b.ex.keyed
	if !b.watch {
		// no idle bound: an upstream that stalls mid-body must not hold
		// the handler, the connection, its slot and the claim for ever
		b.a.w.enter(causeCarried, time.Duration(k.ix.CompleteWithin))
	}
	buf := make([]byte, 32<<10)
	for !k.eof && !k.large && !b.cut.Load() && !b.a.w.idleFire.Load() {
		if _, err := b.Read(buf); err != nil {
			return
		}
	}
}

// holdBody reads the request body of a repeat about to wait for the
// first with its key, up to max_body, and puts it back in front of
// what is left: Go's server notices a client that leaves only once the
// body was read to its end, and a waiting repeat whose client left must
// end at once. The body is still all there should the repeat be sent
// in the first's place.
func (ex *exchange) holdBody() {
	req := ex.req
	if req.Body == nil || req.Body == http.NoBody || ex.held != nil {
		return
	}
	// read to its end, whatever its size (only then does the server
	// watch the connection), hashed for the fingerprint; at most
	// max_body of it is kept, to be sent should this repeat become the
	// first
	h := &heldBody{hash: idempotency.NewHasher(req.Method, req.URL.RequestURI()), limit: max(ex.t.Retry.MaxBody, 0)}
	_, h.err = io.Copy(h, req.Body)
	h.sum = h.hash.Sum()
	ex.held = h
	r := *req
	r.Body = heldReader{Reader: bytes.NewReader(h.kept), Closer: req.Body}
	ex.req = &r
}

// heldBody is the request body of a repeat that waited, read ahead.
type heldBody struct {
	hash  *idempotency.Hasher
	sum   idempotency.Fingerprint
	kept  []byte
	limit int64
	lost  bool  // longer than limit: it cannot be sent
	err   error // the client's body failed
}

func (h *heldBody) Write(p []byte) (int, error) {
	h.hash.Write(p)
	if !h.lost && int64(len(h.kept)+len(p)) <= h.limit {
		h.kept = append(h.kept, p...)
	} else {
		h.lost, h.kept = true, nil
	}
	return len(p), nil
}

// heldReader is a held body as the attempts read it, closed as the
// client's.
type heldReader struct {
	io.Reader
	io.Closer
}

// keyUpgraded ends, or hands on, the claim of a keyed request that
// offered an upgrade, sent once as it is (see exchange.upgrade). A
// switched protocol cannot be replayed: a repeat is told the key is
// used. An upstream that did not switch answered the request as it is:
// that answer is kept as it streams to the client, as any other.
func (ex *exchange) keyUpgraded(res *http.Response, at *attemptResult) {
	k := ex.keyed
	if hb, ok := ex.req.Body.(*hashedBody); ok && !hb.settle() {
		// its body was not all sent: what the fingerprint does not cover
		// cannot be compared with a repeat's
		k.fp, k.summed = idempotency.Unverifiable, true
	}
	switch {
	case res == nil && at.neverSent, res != nil && releasingStatus(res.StatusCode):
		ex.keyRelease()
	case res == nil:
		k.acted = true
		ex.keyFailed(at.outcome)
	case res.StatusCode == http.StatusSwitchingProtocols:
		k.ended = true
		k.claim.Keep(ex.keyFingerprint(), idempotency.Answer{Status: res.StatusCode, Header: res.Header.Clone()})
	default:
		k.status, k.header, k.trailer = res.StatusCode, res.Header.Clone(), res.Trailer
		res.Body = &upgradeRefused{rc: res.Body, ex: ex}
	}
}

// upgradeRefused is the body of the answer to a keyed request whose
// upgrade offer the upstream did not take: kept as it streams, and the
// claim ended when it is closed.
type upgradeRefused struct {
	rc io.ReadCloser
	ex *exchange
}

func (b *upgradeRefused) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	k := b.ex.keyed
	k.capture(p[:n])
	k.eof = k.eof || err == io.EOF
	return n, err
}

func (b *upgradeRefused) Close() error {
	err := b.rc.Close()
	end := OutcomeOK
	if !b.ex.keyed.eof {
		// the client stopped reading, or the upstream cut it: not known
		// whole
		end = OutcomeReset
	}
	b.ex.keyDone(end)
	return err
}

// hashedBody is the body of a keyed request sent as it is (an upgrade
// offer), fed to its fingerprint as it goes. net/http's writer of the
// request may still read it after the answer came (an upstream that
// answered before it read the whole body): what was hashed is settled
// once, under mu, and not written to after.
type hashedBody struct {
	io.ReadCloser
	hash *idempotency.Hasher

	mu      sync.Mutex
	eof     bool
	settled bool
}

func (b *hashedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.mu.Lock()
	if !b.settled {
		b.hash.Write(p[:n])
		b.eof = b.eof || err == io.EOF
	}
	b.mu.Unlock()
	return n, err
}

// settle ends the hashing, and reports whether the fingerprint covers
// what a repeat's can be compared with: the whole body, or the most
// the fingerprint ever covers of it.
func (b *hashedBody) settle() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.settled = true
	return b.eof || b.hash.Full()
}
