package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

func init() {
	caddy.RegisterModule(eventsRecorder{})
}

// eventsSeen receives "name upstream from" for every event the recorder
// handles.
var eventsSeen = make(chan string, 16)

// eventsRecorder is an events handler for tests.
type eventsRecorder struct{}

func (eventsRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.resilient_test_recorder",
		New: func() caddy.Module { return new(eventsRecorder) },
	}
}

func (eventsRecorder) Handle(_ context.Context, e caddy.Event) error {
	select {
	case eventsSeen <- fmt.Sprintf("%s %v %v", e.Name(), e.Data["upstream"], e.Data["from"]):
	default:
	}
	return nil
}

// eventsNext returns the next event of upstream: breakers of earlier
// tests, whose open periods run out meanwhile, emit events too.
func eventsNext(t *testing.T, upstream string) string {
	t.Helper()
	timeout := time.After(3 * time.Second)
	for {
		select {
		case ev := <-eventsSeen:
			if strings.Contains(ev, " "+upstream+" ") {
				return ev
			}
		case <-timeout:
			t.Fatal("no breaker event emitted")
			return ""
		}
	}
}

func TestBreakerChangesAreEmittedAsEvents(t *testing.T) {
	failing := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	id := loads.Add(1)
	site := fmt.Sprintf(globals, workDir+"/events.log", workDir, "") + proxySite(failing.addr, `transport resilient {
			retry off
			breaker {
				consecutive_failures 1
				open_for 200ms
			}
		}`) + fmt.Sprintf(loadCheckSite, id)
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site), nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["apps"].(map[string]any)["events"] = map[string]any{
		"subscriptions": []any{map[string]any{
			"events":   []string{"breaker_open", "breaker_half_open", "breaker_closed"},
			"handlers": []any{map[string]any{"handler": "resilient_test_recorder"}},
		}},
	}
	raw, _ := json.Marshal(cfg)
	for len(eventsSeen) > 0 {
		<-eventsSeen
	}
	tester := caddytest.NewTester(t)
	tester.InitServer(string(raw), "json")
	if t.Failed() {
		t.FailNow()
	}
	waitForLoad(t, id)
	res, err := tester.Client.Get("http://localhost:9080/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if ev, want := eventsNext(t, failing.addr), "breaker_open "+failing.addr+" closed"; ev != want {
		t.Fatalf("event %q, want %q", ev, want)
	}
	time.Sleep(250 * time.Millisecond)
	res, err = tester.Client.Get("http://localhost:9080/") // the probe fails: open again
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	for _, want := range []string{"breaker_half_open " + failing.addr + " open", "breaker_open " + failing.addr + " half_open"} {
		if ev := eventsNext(t, failing.addr); ev != want {
			t.Fatalf("event %q, want %q", ev, want)
		}
	}
}
