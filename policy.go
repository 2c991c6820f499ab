package resilient

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(Selection))
}

// Selection is a load-balancing selection policy that keeps requests
// away from upstreams whose `resilient` breaker would turn them away
// (open, or half-open with all its probes in flight), so they are served
// by a healthy upstream of the same reverse_proxy whatever their method.
// It wraps another policy: that policy picks as usual, and only when its
// pick would be turned away does it pick again among the upstreams whose
// breakers let requests through. When every breaker is open it picks
// among all upstreams, and the request fails fast with breaker_open.
// A half-open upstream with probes to spare stays eligible, so it can
// recover.
//
// Breakers are found by the upstream's dial address; when several
// transports watch the same address with different breaker settings,
// any of them turning requests away makes the upstream skipped.
//
// Caddyfile:
//
//	lb_policy resilient [<policy> [<args...>]]
type Selection struct {
	// The policy that picks an upstream, as the `selection_policy` of
	// reverse_proxy. Default: `{"policy": "random"}`.
	InnerRaw json.RawMessage `json:"inner,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	inner reverseproxy.Selector
	addrs sync.Map // static dial string -> dial address
}

// CaddyModule returns the Caddy module information.
func (*Selection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.resilient",
		New: func() caddy.Module { return new(Selection) },
	}
}

// Provision loads the wrapped policy.
func (s *Selection) Provision(ctx caddy.Context) error {
	if s.InnerRaw == nil {
		s.InnerRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(s, "InnerRaw")
	if err != nil {
		return fmt.Errorf("loading inner selection policy: %v", err)
	}
	s.inner = mod.(reverseproxy.Selector)
	return nil
}

// Select returns the wrapped policy's pick when its breaker lets
// requests through, else its pick among the upstreams whose breakers do,
// else its pick among all.
func (s *Selection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	first := s.inner.Select(pool, r, w)
	if first == nil || !s.rejects(first, repl) {
		return first
	}
	admitted := make(reverseproxy.UpstreamPool, 0, len(pool)-1)
	for _, u := range pool {
		if u != first && !s.rejects(u, repl) {
			admitted = append(admitted, u)
		}
	}
	if len(admitted) > 0 {
		if u := s.inner.Select(admitted, r, w); u != nil {
			return u
		}
	}
	return first
}

// rejects reports whether a breaker of u would turn a request away now.
func (s *Selection) rejects(u *reverseproxy.Upstream, repl *caddy.Replacer) bool {
	for _, b := range lookupBreakers(s.dialAddress(u, repl)) {
		if b.rejects() {
			return true
		}
	}
	return false
}

// dialAddress is the address the transport keys u's breaker by: the one
// Caddy dials (placeholders replaced, host:port form).
func (s *Selection) dialAddress(u *reverseproxy.Upstream, repl *caddy.Replacer) string {
	static := !strings.Contains(u.Dial, "{")
	if static {
		if a, ok := s.addrs.Load(u.Dial); ok {
			return a.(string)
		}
	}
	dial := u.Dial
	if !static && repl != nil {
		dial = repl.ReplaceAll(dial, "")
	}
	addr, err := caddy.ParseNetworkAddress(dial)
	if err != nil || addr.PortRangeSize() != 1 {
		return dial
	}
	a := addr.JoinHostPort(0)
	if static {
		s.addrs.Store(u.Dial, a)
	}
	return a
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
//
//	lb_policy resilient [<policy> [<args...>]]
//
// where <policy> and its arguments (and block) are those of any other
// lb_policy; random when omitted.
func (s *Selection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	if !d.NextArg() {
		return nil
	}
	name := d.Val()
	modID := "http.reverse_proxy.selection_policies." + name
	unm, err := caddyfile.UnmarshalModule(d, modID)
	if err != nil {
		return err
	}
	sel, ok := unm.(reverseproxy.Selector)
	if !ok {
		return d.Errf("module %s (%T) is not a reverseproxy.Selector", modID, unm)
	}
	s.InnerRaw = caddyconfig.JSONModuleObject(sel, "policy", name, nil)
	return nil
}

// Interface guards
var (
	_ reverseproxy.Selector = (*Selection)(nil)
	_ caddy.Provisioner     = (*Selection)(nil)
	_ caddyfile.Unmarshaler = (*Selection)(nil)
)
