package resilient

// executed is what a caller may assume about the upstream once its
// request is over (SPEC §6): the one fact a client needs to decide
// whether to repeat it. The values are ordered: a request with several
// attempts is as executed as the most executed of them.
type executed uint8

const (
	// executedNo: nothing was done upstream. Nothing was sent, or the
	// upstream answered 408, 425, 429 or 503, saying it did nothing.
	executedNo executed = iota
	// executedMaybe: bytes of the request went out and no answer came
	// (a reset, a timeout, a cut answer): the upstream may have acted.
	executedMaybe
	// executedYes: the upstream answered.
	executedYes
)

// executedValues are the placeholder's values, boxed once.
var executedValues = [...]any{executedNo: "no", executedMaybe: "maybe", executedYes: "yes"}

func (e executed) String() string { return executedValues[e].(string) }

// executedBy says what attempt at tells of the upstream.
func executedBy(at *attemptResult) executed {
	switch {
	case at.neverSent:
		return executedNo
	case at.status != 0 && releasingStatus(at.status):
		return executedNo
	case at.status != 0:
		return executedYes
	}
	return executedMaybe
}

// executed returns what the caller may assume: what the answer the
// gateway gave instead says (a replay, a conflict), else the most any
// try tells.
func (ex *exchange) executed() executed {
	if ex.execFixed {
		return ex.exec
	}
	e := ex.prevExec // an upstream lb_retries left may have acted too
	for _, t := range ex.tries {
		e = max(e, t.exec)
	}
	if ex.bodyCut && e == executedYes {
		// the answer's body was cut short: what the upstream did is
		// not known
		e = executedMaybe
	}
	return e
}
