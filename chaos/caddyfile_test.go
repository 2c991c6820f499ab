package chaos

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func prob(p float64) *float64 { return &p }

// block wraps lines in a chaos block: a Caddyfile block closes on its own line.
func block(lines ...string) string {
	return "chaos {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  Handler
	}{
		{
			name:  "empty",
			input: `chaos`,
			want:  Handler{},
		},
		{
			name:  "empty block",
			input: "chaos {\n}",
			want:  Handler{},
		},
		{
			name: "every action",
			input: `chaos {
				key_header X-Tenant
				status 503 retry_after 2s body "try later" probability 0.1
				delay 2s first 3
				quota 10/s
				hang
				reset probability 0.05
				truncate first 1
			}`,
			want: Handler{
				KeyHeader: "X-Tenant",
				Faults: []Fault{
					{Action: "status", Status: 503, RetryAfter: caddy.Duration(2 * time.Second), Body: "try later", Probability: prob(0.1)},
					{Action: "delay", Delay: caddy.Duration(2 * time.Second), First: 3},
					{Action: "quota", Limit: 10, Window: caddy.Duration(time.Second)},
					{Action: "hang"},
					{Action: "reset", Probability: prob(0.05)},
					{Action: "truncate", First: 1},
				},
			},
		},
		{
			name:  "retry_after in bare seconds",
			input: block(`status 429 retry_after 7`),
			want:  Handler{Faults: []Fault{{Action: "status", Status: 429, RetryAfter: caddy.Duration(7 * time.Second)}}},
		},
		{
			name:  "options in any order",
			input: block(`status 500 first 2 body oops retry_after 1m`),
			want:  Handler{Faults: []Fault{{Action: "status", Status: 500, Body: "oops", RetryAfter: caddy.Duration(time.Minute), First: 2}}},
		},
		{
			name:  "quota per minute with every option",
			input: block(`quota 5/m per_key retry_after 30 body "slow down"`),
			want: Handler{Faults: []Fault{{
				Action: "quota", Limit: 5, Window: caddy.Duration(time.Minute), PerKey: true,
				RetryAfter: caddy.Duration(30 * time.Second), Body: "slow down",
			}}},
		},
		{
			name:  "quota per hour, options in any order",
			input: block(`quota 1000/h body "over" per_key`),
			want: Handler{Faults: []Fault{{
				Action: "quota", Limit: 1000, Window: caddy.Duration(time.Hour), PerKey: true, Body: "over",
			}}},
		},
		{
			name:  "probability bounds are allowed",
			input: "chaos {\n hang probability 0\n reset probability 1\n}",
			want: Handler{Faults: []Fault{
				{Action: "hang", Probability: prob(0)},
				{Action: "reset", Probability: prob(1)},
			}},
		},
		{
			name:  "order is kept",
			input: "chaos {\n truncate\n status 200\n delay 10ms\n}",
			want: Handler{Faults: []Fault{
				{Action: "truncate"},
				{Action: "status", Status: 200},
				{Action: "delay", Delay: caddy.Duration(10 * time.Millisecond)},
			}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Handler
			if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("parsed handler does not validate: %v", err)
			}
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  string // a part of the error
	}{
		{`chaos extra`, "wrong argument count"},
		{block(`bogus`), "unrecognized subdirective bogus"},
		{block("key_header A", "key_header B"), "key_header specified more than once"},
		{block(`key_header`), "wrong argument count"},
		{block(`key_header A B`), "wrong argument count"},
		{block(`status`), "wrong argument count"},
		{block(`status abc`), "status code must be a number, got abc"},
		{block(`status 99`), "status code must be between 200 and 599, got 99"},
		{block(`status 150`), "status code must be between 200 and 599, got 150"},
		{block(`status 600`), "status code must be between 200 and 599, got 600"},
		{block(`status 503 retry_after soon`), "retry_after must be a positive number of seconds or duration, got soon"},
		{block(`status 503 retry_after 0`), "retry_after must be a positive number of seconds or duration, got 0"},
		{block(`status 503 retry_after`), "wrong argument count"},
		{block(`status 503 probability 1.5`), "probability must be between 0 and 1, got 1.5"},
		{block(`status 503 probability -0.1`), "probability must be between 0 and 1, got -0.1"},
		{block(`status 503 probability NaN`), "probability must be between 0 and 1, got NaN"},
		{block(`status 503 probability often`), "probability must be a number, got often"},
		{block(`status 503 first 0`), "first must be an integer >= 1, got 0"},
		{block(`status 503 first two`), "first must be an integer >= 1, got two"},
		{block(`status 503 probability 0.5 first 2`), "probability and first cannot be used together"},
		{block(`status 503 first 1 first 2`), "status option first specified more than once"},
		{block(`status 503 colour red`), "unrecognized status option colour"},
		{block(`delay`), "wrong argument count"},
		{block(`delay later`), "delay must be a duration, got later"},
		{block(`delay 0s`), "delay must be > 0, got 0s"},
		{block(`delay 1s retry_after 2s`), "retry_after only applies to the status and quota actions, got 2s"},
		{block(`hang body text`), `body only applies to the status and quota actions, got "text"`},
		{block(`quota`), "wrong argument count"},
		{block(`quota 0/s`), "quota must be <n>/s, <n>/m or <n>/h with n >= 1, got 0/s"},
		{block(`quota -3/s`), "quota must be <n>/s, <n>/m or <n>/h with n >= 1, got -3/s"},
		{block(`quota 10`), "quota must be <n>/s, <n>/m or <n>/h with n >= 1, got 10"},
		{block(`quota 10/d`), "quota must be <n>/s, <n>/m or <n>/h with n >= 1, got 10/d"},
		{block(`quota 10/`), "quota must be <n>/s, <n>/m or <n>/h with n >= 1, got 10/"},
		{block(`quota ten/s`), "quota must be <n>/s, <n>/m or <n>/h with n >= 1, got ten/s"},
		{block(`quota /s`), "quota must be <n>/s, <n>/m or <n>/h with n >= 1, got /s"},
		{block(`quota 10/s retry_after -1s`), "retry_after must be a positive number of seconds or duration, got -1s"},
		{block(`quota 10/s retry_after`), "wrong argument count"},
		{block(`quota 10/s probability 0.5`), "probability cannot be used with the quota action, got 0.5"},
		{block(`quota 10/s first 3`), "first cannot be used with the quota action, got 3"},
		{block(`quota 10/s per_key per_key`), "quota option per_key specified more than once"},
		{block(`quota 10/s 20/m`), "unrecognized quota option 20/m"},
		{block(`status 503 per_key`), "per_key only applies to the quota action"},
		{block(`hang 5s`), "unrecognized hang option 5s"},
		{block(`reset first`), "wrong argument count"},
	} {
		t.Run(tc.input, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil {
				t.Fatalf("expected an error containing %q, got none; parsed %+v", tc.want, h)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("error %q does not name the file and line", err)
			}
		})
	}
}

// TestAdaptSiteBlock checks that chaos is usable straight in a site block:
// the directive is registered and ordered before respond and reverse_proxy,
// wherever it is written, and the JSON it produces loads back.
func TestAdaptSiteBlock(t *testing.T) {
	input := `:8080 {
	respond "fine"
	reverse_proxy /api/* 127.0.0.1:9
	chaos /flaky/* {
		status 503 retry_after 2s first 3
		quota 10/s per_key
	}
}
`
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("caddyfile adapter not registered")
	}
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("unexpected warnings: %v", warnings)
	}

	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("adapted JSON: %v", err)
	}
	var handlers []map[string]any
	collectHandlers(cfg, &handlers)
	var names []string
	for _, h := range handlers {
		names = append(names, h["handler"].(string))
	}
	want := []string{"chaos", "static_response", "reverse_proxy"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("handler order = %v, want %v\n%s", names, want, out)
	}

	raw, err := json.Marshal(handlers[0])
	if err != nil {
		t.Fatal(err)
	}
	const wantJSON = `{"faults":[{"action":"status","first":3,"retry_after":2000000000,"status":503},` +
		`{"action":"quota","limit":10,"per_key":true,"window":1000000000}],"handler":"chaos"}`
	if string(raw) != wantJSON {
		t.Errorf("chaos JSON = %s, want %s", raw, wantJSON)
	}
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatalf("chaos JSON does not load: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Errorf("chaos JSON does not validate: %v", err)
	}
}

// collectHandlers appends, depth first, every object with a "handler" key.
func collectHandlers(v any, out *[]map[string]any) {
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v["handler"]; ok {
			*out = append(*out, v)
		}
		for _, k := range []string{"apps", "http", "servers", "srv0", "routes", "handle"} {
			if child, ok := v[k]; ok {
				collectHandlers(child, out)
			}
		}
	case []any:
		for _, e := range v {
			collectHandlers(e, out)
		}
	}
}
