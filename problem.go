package resilient

import "encoding/json"

// problem is an RFC 9457 problem details object, the one schema of
// every answer the gateway writes itself (SPEC §6): its own 400, 409
// and 422, the replay of a kept no-answer, and, through the
// {http.resilient.problem} placeholder, the errors handle_errors
// renders. A client classifies any of them from executed, retry_after
// and the status alone.
type problem struct {
	Type        string `json:"type"`
	Title       string `json:"title"`
	Status      int    `json:"status"`
	Detail      string `json:"detail"`
	Outcome     string `json:"outcome"`
	Executed    string `json:"executed"`
	Attempts    int    `json:"attempts"`
	RetryAfter  int64  `json:"retry_after,omitempty"`
	Idempotency string `json:"idempotency,omitempty"`
	Upstream    string `json:"upstream"`
}

// problemTypeBase names the gateway's own cases: the outcome follows.
const problemTypeBase = "https://caddy-resilient.dev/outcomes/"

// problemTypeDraft names the cases of the Idempotency-Key draft: its
// error scenarios.
const problemTypeDraft = "https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header-07#section-2.7"

// outcomeDetails say in a sentence what each failing outcome means to
// the caller, and what it may do.
var outcomeDetails = [numOutcomes]string{
	OutcomeConnectError:   "The upstream could not be reached; nothing was sent. Repeating is safe.",
	OutcomeConnectTimeout: "Connecting to the upstream timed out; nothing was sent. Repeating is safe.",
	OutcomeTLSError:       "The TLS handshake with the upstream failed; nothing was sent.",
	OutcomeTLSTimeout:     "The TLS handshake with the upstream timed out; nothing was sent. Repeating is safe.",
	OutcomeReset:          "The upstream closed the connection before answering.",
	OutcomeWriteTimeout:   "Sending the request to the upstream timed out.",
	OutcomeReadTimeout:    "The upstream did not answer in time.",
	OutcomeAttemptTimeout: "The upstream did not answer in time.",
	OutcomeTotalTimeout:   "The request ran out of time.",
	OutcomeBreakerOpen:    "The upstream is failing; calls to it are paused. Nothing was sent: repeat after Retry-After.",
	OutcomePoolTimeout:    "Too many calls to the upstream are in flight. Nothing was sent: repeat after Retry-After.",
	OutcomeRateLimited:    "The upstream's rate limit is reached. Nothing was sent: repeat after Retry-After.",
	OutcomeCanceled:       "The client went away.",
}

// executedDetails complete a detail with what the caller may assume.
var executedDetails = [...]string{
	executedNo:    "",
	executedMaybe: " The upstream may have acted on the request: repeat it only with the same Idempotency-Key, or check with the upstream.",
	executedYes:   "",
}

// problem returns the problem object of the exchange as it stands,
// with status, and the type, title and detail of its case ("" for the
// outcome's own).
func (ex *exchange) problem(status int, typ, title, detail string, retryAfter int64) problem {
	e := ex.executed()
	if typ == "" {
		typ = problemTypeBase + ex.outcome.String()
	}
	if title == "" {
		title = "Upstream call failed: " + ex.outcome.String()
	}
	if detail == "" {
		detail = outcomeDetails[ex.outcome]
		if detail == "" {
			detail = "The gateway could not complete the request."
		}
		detail += executedDetails[e]
	}
	return problem{
		Type:        typ,
		Title:       title,
		Status:      status,
		Detail:      detail,
		Outcome:     ex.outcome.String(),
		Executed:    e.String(),
		Attempts:    ex.attempts(),
		RetryAfter:  retryAfter,
		Idempotency: ex.keyVerdict,
		Upstream:    ex.up.addr,
	}
}

// problemJSON is problem as JSON; it cannot fail.
func problemJSON(p problem) []byte {
	b, _ := json.Marshal(p)
	return b
}
