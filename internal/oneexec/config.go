package oneexec

import (
	"fmt"
	"strings"
	"time"
)

// Limits are the settings of the idempotency block that a reload
// changes mid-run: every record must survive the change.
type Limits struct {
	TTL       string
	MaxMemory string
}

// The limits the gateways start with, and those a reload gives them.
// Neither lets a record expire or be dropped for room within a run
// (the report's gauges show what the stores kept): a repeat on the same
// instance must always find its record, Redis or not.
var (
	StartLimits  = Limits{TTL: "1h", MaxMemory: "512MiB"}
	ReloadLimits = Limits{TTL: "2h", MaxMemory: "384MiB"}
)

// Route is the handle block of a gateway's site: everything goes to the
// upstream at addr through transport resilient with the run's config,
// and fleet (a `fleet { … }` block, or "") inside it. The config invites
// duplicates everywhere it can: POST is among the methods retried, every
// failure status and timeouts are retried, GETs are hedged early; the
// idempotency block must hold all the same. The answers carry the
// gateway's verdict in HeaderOutcome, HeaderExecuted and HeaderIdem; the
// site's handle_errors must set them too, from the same placeholders.
func Route(addr, fleet string, t Timing, l Limits) string {
	block := fmt.Sprintf(`timeouts {
	total %s
}
retry {
	on connect_error tls_error reset timeout 408 425 429 500 502 503 504
	methods GET HEAD OPTIONS TRACE PUT DELETE POST PATCH
	backoff 10ms 100ms
	retry_after 1s
}
hedge {
	after 25ms
	max 2
}
deadline
idempotency {
	ttl %s
	max_memory %s
	complete_within %s
}
%s`, caddyDuration(t.Total), l.TTL, l.MaxMemory, caddyDuration(t.CompleteWithin), fleet)
	var b strings.Builder
	b.WriteString("\thandle {\n\t\treverse_proxy " + addr + " {\n\t\t\ttransport resilient {\n")
	for line := range strings.SplitSeq(block, "\n") {
		if line != "" {
			b.WriteString("\t\t\t\t" + line + "\n")
		}
	}
	b.WriteString("\t\t\t}\n")
	fmt.Fprintf(&b, "\t\t\theader_up %s {env.GATEWAY}\n", HeaderGateway)
	fmt.Fprintf(&b, "\t\t\theader_down %s {http.resilient.outcome}\n", HeaderOutcome)
	fmt.Fprintf(&b, "\t\t\theader_down %s {http.resilient.executed}\n", HeaderExecuted)
	fmt.Fprintf(&b, "\t\t\theader_down %s {http.resilient.idempotency}\n", HeaderIdem)
	b.WriteString("\t\t}\n\t}\n")
	return b.String()
}

// ErrorHeaders are the lines of a site's handle_errors block that report
// the gateway's verdict on the errors it answers.
var ErrorHeaders = fmt.Sprintf("\t\theader %s {http.resilient.outcome}\n\t\theader %s {http.resilient.executed}\n\t\theader %s {http.resilient.idempotency}\n",
	HeaderOutcome, HeaderExecuted, HeaderIdem)

// caddyDuration writes d as the Caddyfile reads it.
func caddyDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d/time.Millisecond)
}
