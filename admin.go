package resilient

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/sony/gobreaker/v2"
)

func init() {
	caddy.RegisterModule(adminBreakers{})
}

// adminBreakers provides the /resilient/breakers endpoints of Caddy's
// admin API: the state of every breaker, and operator overrides.
//
//	GET  /resilient/breakers
//	POST /resilient/breakers/reset?upstream=host:port
//	POST /resilient/breakers/force_open?upstream=host:port&for=30s
//	POST /resilient/breakers/force_close?upstream=host:port[&for=30s]
//
// The POST routes act on every breaker of the upstream (one per distinct
// breaker settings) and answer with their new state, as GET does.
type adminBreakers struct{}

// CaddyModule returns the Caddy module information.
func (adminBreakers) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.resilient",
		New: func() caddy.Module { return new(adminBreakers) },
	}
}

const adminBreakersPath = "/resilient/breakers"

// Routes returns the routes of the breaker endpoints.
func (a adminBreakers) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: adminBreakersPath, Handler: caddy.AdminHandlerFunc(a.handleList)},
		{Pattern: adminBreakersPath + "/", Handler: caddy.AdminHandlerFunc(a.handleAction)},
		{Pattern: "/resilient/", Handler: caddy.AdminHandlerFunc(a.handleUnknown)},
	}
}

// handleUnknown answers every other path under /resilient/.
func (adminBreakers) handleUnknown(w http.ResponseWriter, r *http.Request) error {
	return adminError(http.StatusNotFound, "unknown path %q: the resilient admin API has %s and %s/{reset,force_open,force_close}",
		r.URL.Path, adminBreakersPath, adminBreakersPath)
}

// Bounds of the admin API's input.
const (
	// overrides last from a second to a week: a longer one would outlive
	// anyone's memory of why it was given
	minOverride = time.Second
	maxOverride = 7 * 24 * time.Hour
	// a dial address is a host name (at most 253 characters) and a port
	maxUpstreamLen = 255
)

// handleList answers GET /resilient/breakers.
func (adminBreakers) handleList(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return adminMethodNotAllowed(w, http.MethodGet)
	}
	return adminWriteStatuses(w, "", allBreakers())
}

// handleAction answers POST /resilient/breakers/{reset,force_open,force_close}.
func (adminBreakers) handleAction(w http.ResponseWriter, r *http.Request) error {
	action := strings.TrimPrefix(r.URL.Path, adminBreakersPath+"/")
	if !slices.Contains([]string{"reset", "force_open", "force_close"}, action) {
		return adminError(http.StatusNotFound, "unknown breaker action %q: use reset, force_open or force_close", action)
	}
	if r.Method != http.MethodPost {
		return adminMethodNotAllowed(w, http.MethodPost)
	}
	upstream, d, err := adminParams(action, r.URL.RawQuery)
	if err != nil {
		return err
	}
	switch action {
	case "reset":
		if !applyReset(upstream) {
			return adminError(http.StatusNotFound, "reset: no breaker or override for upstream %q", upstream)
		}
		shareOverride(upstream, forceNone, 0, true)
	case "force_open", "force_close":
		mode := forceOpen
		if action == "force_close" {
			mode = forceClosed
		}
		if !applyForce(upstream, mode, d, "") {
			return adminError(http.StatusTooManyRequests, "%s: overrides are held for %d upstreams no breaker has seen; reset some first", action, maxOverrides)
		}
		shareOverride(upstream, mode, d, false)
	}
	bs := lookupBreakers(upstream)
	return adminWriteStatuses(w, upstream, bs)
}

// adminParams reads the query of a breaker action: exactly one
// upstream, and for= as the action takes it. Anything else is refused,
// before anything changes.
func adminParams(action, rawQuery string) (upstream string, d time.Duration, err error) {
	q, perr := url.ParseQuery(rawQuery)
	if perr != nil {
		return "", 0, adminError(http.StatusBadRequest, "%s: malformed query: %v", action, perr)
	}
	for name, vs := range q {
		switch {
		case name != "upstream" && name != "for":
			return "", 0, adminError(http.StatusBadRequest, "%s: unknown parameter %q: use upstream= and for=", action, name)
		case len(vs) > 1:
			return "", 0, adminError(http.StatusBadRequest, "%s: %s= given %d times, want once", action, name, len(vs))
		}
	}
	upstream = q.Get("upstream")
	switch {
	case upstream == "":
		return "", 0, adminError(http.StatusBadRequest, "%s: missing upstream=<host:port>", action)
	case len(upstream) > maxUpstreamLen:
		return "", 0, adminError(http.StatusBadRequest, "%s: upstream= is %d characters long, at most %d", action, len(upstream), maxUpstreamLen)
	case !validUpstream(upstream):
		return "", 0, adminError(http.StatusBadRequest, "%s: upstream=%q is not a host:port", action, upstream)
	}
	switch v, given := q.Get("for"), q.Has("for"); {
	case given && action == "reset":
		return "", 0, adminError(http.StatusBadRequest, "reset: takes no for=")
	case given:
		var perr error
		d, perr = caddy.ParseDuration(v)
		if perr != nil || d < minOverride || d > maxOverride {
			return "", 0, adminError(http.StatusBadRequest, "%s: for=%q must be a duration from 1s to 7d (168h), such as 30s", action, v)
		}
	case action == "force_open":
		return "", 0, adminError(http.StatusBadRequest, "force_open: missing for=<duration>, e.g. for=30s")
	}
	return upstream, d, nil
}

// validUpstream reports whether s is a dial address: host:port, the
// host a name or an address.
func validUpstream(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`/\?#@"<>{}|^`+"`", c) >= 0 {
			return false
		}
	}
	n, err := strconv.Atoi(port)
	return err == nil && n > 0 && n < 65536
}

func adminMethodNotAllowed(w http.ResponseWriter, allow string) error {
	w.Header().Set("Allow", allow)
	return adminError(http.StatusMethodNotAllowed, "method not allowed: use %s", allow)
}

// adminError is an error Caddy's admin endpoint answers as
// {"error": "..."} with the given status.
func adminError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

// adminWriteStatuses answers with the status of bs; and, for the
// upstream only (every upstream when ""), of the overrides held for
// upstreams no breaker has seen yet.
func adminWriteStatuses(w http.ResponseWriter, only string, bs []*breaker) error {
	now := time.Now()
	out := make([]breakerStatus, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.status(now))
	}
	if only == "" || len(bs) == 0 {
		for _, c := range pendingOverrides(now) {
			if only == "" || c.addr == only {
				out = append(out, pendingStatus(c, now))
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	return nil
}

// pendingStatus shows the override of an upstream that no breaker has
// seen: its state is what requests will get.
func pendingStatus(c *overrideCell, now time.Time) breakerStatus {
	s := breakerStatus{Upstream: c.addr, State: "closed"}
	if o, _ := c.current(now); o != nil {
		s.State = overrideName(o.mode)
		s.Override = &overrideStatus{State: overrideName(o.mode), From: overrideFrom(c), BreakerState: "closed"}
		if !o.until.IsZero() {
			until := o.until
			s.Override.Until = &until
		}
	}
	return s
}

// breakerStatus is one breaker as the admin API shows it.
type breakerStatus struct {
	// Upstream is the dial address (host:port).
	Upstream string `json:"upstream"`
	// Seen is false for an upstream that has an override but has not
	// carried traffic yet: no breaker exists for it so far, and the
	// override applies to the first one as soon as it does.
	Seen bool `json:"seen"`
	// State is what requests see: closed, half_open or open, operator
	// overrides included.
	State string `json:"state"`
	// Counts are the breaker's own: the rolling window's when closed, the
	// probes' when half-open, nothing when open.
	Counts breakerCounts `json:"counts"`
	// OpenUntil is when the breaker, open on its own, lets probes through.
	OpenUntil *time.Time `json:"open_until,omitempty"`
	// OpenPeriod is the length of the breaker's open period when open
	// on its own (OpenUntil ends it), or of the one that just ended when
	// half-open: should a probe fail, the next is twice as long, up to
	// open_for_max.
	OpenPeriod string `json:"open_period,omitempty"`
	// Override is the operator override in force, if any.
	Override *overrideStatus `json:"override,omitempty"`
	// Fleet is the state another instance of the fleet reached, which
	// this breaker follows now, if any.
	Fleet *fleetStatus `json:"fleet,omitempty"`
	// Settings are the breaker's settings, defaults applied; absent for
	// an upstream not seen yet.
	Settings *breakerSettings `json:"settings,omitempty"`
}

type breakerCounts struct {
	Requests             uint32 `json:"requests"`
	Successes            uint32 `json:"successes"`
	Failures             uint32 `json:"failures"`
	Excluded             uint32 `json:"excluded"`
	ConsecutiveSuccesses uint32 `json:"consecutive_successes"`
	ConsecutiveFailures  uint32 `json:"consecutive_failures"`
}

type overrideStatus struct {
	// State is the state forced: open or closed.
	State string `json:"state"`
	// From is "fleet" when another instance of the fleet gave it, else
	// "local".
	From string `json:"from"`
	// Until is when the override ends; absent: at the next reset.
	Until *time.Time `json:"until,omitempty"`
	// BreakerState is the breaker's own state behind the override.
	BreakerState string `json:"breaker_state"`
}

type fleetStatus struct {
	// State is open or half_open.
	State string `json:"state"`
	// Until is when following it ends on its own.
	Until time.Time `json:"until"`
	// Origin is the ID of the instance that reached it.
	Origin string `json:"origin"`
	// OpenPeriod is the length of that instance's open period (open), or
	// of the one that just ended (half_open), when it said.
	OpenPeriod string `json:"open_period,omitempty"`
}

type breakerSettings struct {
	FailureRatio        float64  `json:"failure_ratio"`
	MinRequests         int      `json:"min_requests"`
	ConsecutiveFailures int      `json:"consecutive_failures"`
	Window              string   `json:"window"`
	OpenFor             string   `json:"open_for"`
	OpenForMax          string   `json:"open_for_max"`
	HalfOpenRequests    int      `json:"half_open_requests"`
	FailureStatus       []string `json:"failure_status"`
	SlowCall            string   `json:"slow_call"`
}

// status returns the breaker as the admin API shows it.
func (b *breaker) status(now time.Time) breakerStatus {
	own := b.own() // brings the breaker up to date first
	cfg := b.cfg
	s := breakerStatus{
		Upstream: b.upstream,
		Seen:     true,
		State:    b.state(),
		Settings: &breakerSettings{
			FailureRatio:        cfg.FailureRatio,
			MinRequests:         cfg.MinRequests,
			ConsecutiveFailures: *cfg.ConsecutiveFailures,
			Window:              time.Duration(cfg.Window).String(),
			OpenFor:             time.Duration(cfg.OpenFor).String(),
			OpenForMax:          time.Duration(cfg.OpenForMax).String(),
			HalfOpenRequests:    cfg.HalfOpenRequests,
			FailureStatus:       cfg.FailureStatus,
			SlowCall:            time.Duration(cfg.SlowCall).String(),
		},
	}
	switch own {
	case gobreaker.StateClosed:
		// the window decides when it trips
		wc := b.win.counts()
		s.Counts = breakerCounts{
			Requests:            wc.results() + wc.excluded,
			Successes:           wc.successes,
			Failures:            wc.failures,
			Excluded:            wc.excluded,
			ConsecutiveFailures: wc.consecutiveFailures,
		}
	case gobreaker.StateHalfOpen:
		c := b.cur.Load().cb.Counts()
		s.Counts = breakerCounts{
			Requests:             c.Requests,
			Successes:            c.TotalSuccesses,
			Failures:             c.TotalFailures,
			Excluded:             c.TotalExclusions,
			ConsecutiveSuccesses: c.ConsecutiveSuccesses,
			ConsecutiveFailures:  c.ConsecutiveFailures,
		}
	case gobreaker.StateOpen:
		t := time.Unix(0, b.openUntil.Load())
		s.OpenUntil = &t
	}
	if d := b.openPeriod(own); d > 0 {
		s.OpenPeriod = d.String()
	}
	if mode, until := b.override(now); mode != forceNone {
		s.Override = &overrideStatus{State: overrideName(mode), From: overrideFrom(b.ov), BreakerState: stateName(own)}
		if !until.IsZero() {
			s.Override.Until = &until
		}
	}
	if rs := b.followed(now); rs != nil {
		s.Fleet = &fleetStatus{State: rs.state, Until: rs.until, Origin: rs.origin}
		if rs.period > 0 {
			s.Fleet.OpenPeriod = rs.period.String()
		}
	}
	return s
}

// overrideFrom says where the override of c came from.
func overrideFrom(c *overrideCell) string {
	if o := c.ov.Load(); o != nil && o.origin != "" {
		return "fleet"
	}
	return "local"
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminBreakers)(nil)
)
