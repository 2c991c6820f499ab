package chaos

import (
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("chaos", parseCaddyfile)
	// Before respond, and so before reverse_proxy: a site block can put
	// chaos in front of either without a route block.
	httpcaddyfile.RegisterDirectiveOrder("chaos", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	c := new(Handler)
	err := c.UnmarshalCaddyfile(h.Dispenser)
	return c, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	chaos [<matcher>] {
//		key_header <header>
//		status <code> [retry_after <seconds|duration>] [body <text>] [probability <p> | first <n>]
//		delay <duration> [probability <p> | first <n>]
//		quota <n>/s|/m|/h [per_key] [retry_after <seconds|duration>] [body <text>]
//		hang [probability <p> | first <n>]
//		reset [probability <p> | first <n>]
//		truncate [probability <p> | first <n>]
//	}
//
// Each line but key_header is a fault, checked in the order written.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "key_header":
			if h.KeyHeader != "" {
				return d.Err("chaos: key_header specified more than once")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.KeyHeader = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case actionStatus, actionDelay, actionQuota, actionHang, actionReset, actionTruncate:
			f, err := parseFault(d)
			if err != nil {
				return err
			}
			h.Faults = append(h.Faults, f)
		default:
			return d.Errf("chaos: unrecognized subdirective %s", d.Val())
		}
	}
	return nil
}

// parseFault reads one fault line, the dispenser being on its action.
func parseFault(d *caddyfile.Dispenser) (Fault, error) {
	f := Fault{Action: d.Val()}
	switch f.Action {
	case actionStatus:
		if !d.NextArg() {
			return f, d.ArgErr()
		}
		code, err := strconv.Atoi(d.Val())
		if err != nil {
			return f, d.Errf("chaos: status code must be a number, got %s", d.Val())
		}
		f.Status = code
	case actionDelay:
		if !d.NextArg() {
			return f, d.ArgErr()
		}
		dur, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return f, d.Errf("chaos: delay must be a duration, got %s", d.Val())
		}
		f.Delay = caddy.Duration(dur)
	case actionQuota:
		if !d.NextArg() {
			return f, d.ArgErr()
		}
		limit, window, ok := parseRate(d.Val())
		if !ok {
			return f, d.Errf("chaos: quota must be <n>/s, <n>/m or <n>/h with n >= 1, got %s", d.Val())
		}
		f.Limit, f.Window = limit, caddy.Duration(window)
	}

	seen := make(map[string]bool)
	for d.NextArg() {
		opt := d.Val()
		switch opt {
		case "retry_after", "body", "probability", "first", "per_key":
		default:
			return f, d.Errf("chaos: unrecognized %s option %s", f.Action, opt)
		}
		if seen[opt] {
			return f, d.Errf("chaos: %s option %s specified more than once", f.Action, opt)
		}
		seen[opt] = true
		if opt == "per_key" {
			// A flag: it takes no value.
			f.PerKey = true
			continue
		}
		if !d.NextArg() {
			return f, d.ArgErr()
		}
		val := d.Val()

		switch opt {
		case "retry_after":
			dur, err := parseSeconds(val)
			if err != nil || dur <= 0 {
				return f, d.Errf("chaos: retry_after must be a positive number of seconds or duration, got %s", val)
			}
			f.RetryAfter = caddy.Duration(dur)
		case "body":
			f.Body = val
		case "probability":
			p, err := strconv.ParseFloat(val, 64)
			if err != nil {
				return f, d.Errf("chaos: probability must be a number, got %s", val)
			}
			f.Probability = &p
		case "first":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return f, d.Errf("chaos: first must be an integer >= 1, got %s", val)
			}
			f.First = n
		}
	}

	if err := f.validate(); err != nil {
		return f, d.Errf("chaos: %v", err)
	}
	return f, nil
}

// parseRate reads a quota such as 10/s into its limit and window.
func parseRate(s string) (int, time.Duration, bool) {
	n, unit, _ := strings.Cut(s, "/")
	limit, err := strconv.Atoi(n)
	window, ok := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	return limit, window, err == nil && ok && limit >= 1
}

// parseSeconds reads a bare integer as seconds, as in a Retry-After header,
// and anything else as a duration.
func parseSeconds(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return caddy.ParseDuration(s)
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
