package resilient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// cfUnmarshal parses input the way reverse_proxy hands a transport its
// tokens: starting at the module name.
func cfUnmarshal(input string) (*Transport, error) {
	tr := new(Transport)
	err := tr.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return tr, err
}

// cfCanonical re-encodes a JSON document with sorted keys, so two
// documents compare equal when they hold the same values.
func cfCanonical(t *testing.T, doc []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatalf("invalid JSON %s: %v", doc, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestCaddyfileValid(t *testing.T) {
	for _, tc := range []struct {
		name, input, want string
	}{
		{
			name:  "empty",
			input: `resilient`,
			want:  `{}`,
		},
		{
			name:  "empty block",
			input: "resilient {\n}",
			want:  `{}`,
		},
		{
			name: "rate_limit",
			input: `resilient {
				rate_limit {
					rate 100/s
					burst 10
					max_wait 500ms
					key {http.request.header.X-Tenant}
					obey_retry_after off
				}
			}`,
			want: `{"rate_limit":{"rate":"100/s","burst":10,"max_wait":500000000,
				"key":"{http.request.header.X-Tenant}","obey_retry_after":false}}`,
		},
		{
			name: "fleet",
			input: `resilient {
				fleet {
					redis redis://:s3cret@10.0.0.5:6379/2
					prefix payments
					timeout 80ms
				}
			}`,
			want: `{"fleet":{"redis":"redis://:s3cret@10.0.0.5:6379/2","prefix":"payments","timeout":80000000}}`,
		},
		{
			name: "idempotency",
			input: `resilient {
				idempotency {
					header X-Request-Key
					methods post PATCH
					scope {http.request.header.X-Tenant}
					ttl 1h
					max_response 512KiB
					max_memory 32MiB
					wait 2s
					require
				}
			}`,
			want: `{"idempotency":{"header":"X-Request-Key","methods":["POST","PATCH"],"scope":["{http.request.header.X-Tenant}"],
				"ttl":3600000000000,"max_response":524288,"max_memory":33554432,"wait":2000000000,"require":true}}`,
		},
		{
			name:  "idempotency with its defaults",
			input: "resilient {\n\tidempotency\n}",
			want:  `{"idempotency":{}}`,
		},
		{
			name:  "idempotency wait auto is the default, wait 0 is written",
			input: "resilient {\n\tidempotency {\n\t\twait auto\n\t\tcomplete_within 5m\n\t}\n}",
			want:  `{"idempotency":{"complete_within":300000000000}}`,
		},
		{
			name:  "idempotency wait 0",
			input: "resilient {\n\tidempotency {\n\t\twait 0\n\t}\n}",
			want:  `{"idempotency":{"wait":0}}`,
		},
		{
			name: "fallback",
			input: `resilient {
				fallback {
					stale 10m
					on breaker_open timeout 5xx
					methods get
					scope {http.request.header.X-Tenant}
					max_response 256KiB
					max_memory 16MiB
				}
			}`,
			want: `{"fallback":{"stale":600000000000,"on":["breaker_open","timeout","5xx"],"methods":["GET"],
				"scope":["{http.request.header.X-Tenant}"],"max_response":262144,"max_memory":16777216}}`,
		},
		{
			name:  "fallback with its defaults",
			input: "resilient {\n\tfallback\n}",
			want:  `{"fallback":{}}`,
		},
		{
			name:  "rate_limit that never waits",
			input: "resilient {\n\trate_limit {\n\t\trate 600/m\n\t\tmax_wait 0\n\t}\n}",
			want:  `{"rate_limit":{"rate":"600/m","max_wait":0}}`,
		},
		{
			name: "every timeout",
			input: `resilient {
				timeouts {
					connect 3s
					tls     5s
					write   10s
					read    30s
					pool    1s
					attempt 10s
					total   1m
				}
			}`,
			want: `{"timeouts":{"connect":3000000000,"tls":5000000000,"write":10000000000,
				"read":30000000000,"pool":1000000000,"attempt":10000000000,"total":60000000000}}`,
		},
		{
			name: "every timeout off",
			input: `resilient {
				timeouts {
					connect off
					tls     off
					write   off
					read    off
					pool    off
					attempt off
					total   off
				}
			}`,
			want: `{"timeouts":{"connect":-1,"tls":-1,"write":-1,"read":-1,"pool":-1,"attempt":-1,"total":-1}}`,
		},
		{
			name: "pool",
			input: `resilient {
				pool {
					max_conns    64
					max_idle     8
					idle_timeout 90s
				}
			}`,
			want: `{"pool":{"max_conns":64,"max_idle":8,"idle_timeout":90000000000}}`,
		},
		{
			name: "pool keeping no idle connections",
			input: `resilient {
				pool {
					max_conns 0
					max_idle  0
				}
			}`,
			want: `{"pool":{"max_idle":-1}}`,
		},
		{
			name: "every retry option",
			input: `resilient {
				retry {
					attempts 4
					backoff  50ms 2s
					on connect_error tls_error reset timeout 408 429 5xx
					methods get HEAD Options
					idempotency_header X-Request-Key
					generate_idempotency_key
					retry_after 20s
					budget 0.1 5
					max_body 512KiB
				}
			}`,
			want: `{"retry":{"attempts":4,"backoff":{"first":50000000,"max":2000000000},
				"on":["connect_error","tls_error","reset","timeout","408","429","5xx"],
				"methods":["GET","HEAD","OPTIONS"],"idempotency_header":"X-Request-Key",
				"generate_idempotency_key":true,"retry_after":20000000000,
				"budget":{"ratio":0.1,"min_per_second":5},"max_body":524288}}`,
		},
		{
			name:  "retry off",
			input: "resilient {\n\tretry off\n}",
			want:  `{"retry":{"disabled":true}}`,
		},
		{
			name: "retry options switched off",
			input: `resilient {
				retry {
					idempotency_header off
					retry_after off
					budget off
				}
			}`,
			want: `{"retry":{"idempotency_header":"off","retry_after":-1,"budget":{"disabled":true}}}`,
		},
		{
			name: "retry budget of zero is kept",
			input: `resilient {
				retry {
					budget 0 0
					max_body 1MB
					backoff 1s 1s
				}
			}`,
			want: `{"retry":{"budget":{"ratio":0,"min_per_second":0},"max_body":1000000,
				"backoff":{"first":1000000000,"max":1000000000}}}`,
		},
		{
			name: "every breaker option",
			input: `resilient {
				breaker {
					failure_ratio        0.25
					min_requests         50
					consecutive_failures 7
					window               30s
					open_for             1m
					half_open_requests   2
					failure_status       5xx 429
					slow_call            2s
				}
			}`,
			want: `{"breaker":{"failure_ratio":0.25,"min_requests":50,"consecutive_failures":7,
				"window":30000000000,"open_for":60000000000,"half_open_requests":2,
				"failure_status":["5xx","429"],"slow_call":2000000000}}`,
		},
		{
			name:  "open_for first and longest",
			input: "resilient {\n\tbreaker {\n\t\topen_for 2s 1m\n\t}\n}",
			want:  `{"breaker":{"open_for":2000000000,"open_for_max":60000000000}}`,
		},
		{
			name:  "open_for fixed, spelled twice",
			input: "resilient {\n\tbreaker {\n\t\topen_for 5s 5s\n\t}\n}",
			want:  `{"breaker":{"open_for":5000000000,"open_for_max":5000000000}}`,
		},
		{
			name:  "breaker off",
			input: "resilient {\n\tbreaker off\n}",
			want:  `{"breaker":{"disabled":true}}`,
		},
		{
			name: "breaker rules switched off",
			input: `resilient {
				breaker {
					failure_ratio        1
					consecutive_failures 0
					slow_call            0
				}
			}`,
			want: `{"breaker":{"failure_ratio":1,"consecutive_failures":0}}`,
		},
		{
			name: "only transport http options",
			input: `resilient {
				dial_timeout 2s
				tls
				tls_insecure_skip_verify
				read_buffer 8KiB
				keepalive 30s
				versions h2c 2
			}`,
			want: `{"dial_timeout":2000000000,"tls":{"insecure_skip_verify":true},"read_buffer_size":8192,
				"keep_alive":{"idle_timeout":30000000000},"versions":["h2c","2"]}`,
		},
		{
			name: "transport http options around and between ours",
			input: `resilient {
				dial_timeout 2s # before
				timeouts {
					read 5s
				}
				tls_server_name api.example.com
				retry off
				keepalive_idle_conns_per_host 4
				breaker {
					window 20s
				}
				pool {
					max_conns 10
				}
				versions 1.1
			}`,
			want: `{"dial_timeout":2000000000,"tls":{"server_name":"api.example.com"},
				"keep_alive":{"max_idle_conns_per_host":4},"versions":["1.1"],
				"timeouts":{"read":5000000000},"retry":{"disabled":true},
				"breaker":{"window":20000000000},"pool":{"max_conns":10}}`,
		},
		{
			name: "transport http option with a block",
			input: `resilient {
				retry {
					attempts 2
				}
				tls_trust_pool file {
					pem_file /etc/ssl/ca.pem
				}
				breaker off
			}`,
			want: `{"tls":{"ca":{"pem_files":["/etc/ssl/ca.pem"],"provider":"file"}},
				"retry":{"attempts":2},"breaker":{"disabled":true}}`,
		},
		{
			name:  "deadline send in milliseconds",
			input: "resilient {\n\tdeadline {\n\t\tsend X-Left ms\n\t}\n}",
			want:  `{"deadline":{"send":"X-Left","send_unit":"ms"}}`,
		},
		{
			name:  "deadline send without header",
			input: "resilient {\n\tdeadline {\n\t\theader off\n\t\tsend X-Left s\n\t}\n}",
			want:  `{"deadline":{"header":"off","send":"X-Left","send_unit":"s"}}`,
		},
		{
			name:  "deadline send off",
			input: "resilient {\n\tdeadline {\n\t\tsend off\n\t}\n}",
			want:  `{"deadline":{"send":"off"}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := cfUnmarshal(tc.input)
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			got, err := json.Marshal(tr)
			if err != nil {
				t.Fatalf("marshaling: %v", err)
			}
			if g, w := cfCanonical(t, got), cfCanonical(t, []byte(tc.want)); g != w {
				t.Errorf("got  %s\nwant %s", g, w)
			}
		})
	}
}

// TestCaddyfileInvalid checks that every bad input is rejected with an
// error naming the option, the bad value and the line.
func TestCaddyfileInvalid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		line  int
		want  []string // each must appear in the message
	}{
		{"attempts 0", "resilient {\n\tretry {\n\t\tattempts 0\n\t}\n}", 3, []string{"attempts", "0"}},
		{"attempts not a number", "resilient {\n\tretry {\n\t\tattempts x\n\t}\n}", 3, []string{"attempts", "x"}},
		{"attempts missing", "resilient {\n\tretry {\n\t\tattempts\n\t}\n}", 3, []string{"attempts"}},
		{"backoff with one wait", "resilient {\n\tretry {\n\t\tbackoff 25ms\n\t}\n}", 3, []string{"backoff", "1 arguments"}},
		{"backoff negative", "resilient {\n\tretry {\n\t\tbackoff -25ms 1s\n\t}\n}", 3, []string{"backoff", "-25ms"}},
		{"backoff longest shorter", "resilient {\n\tretry {\n\t\tbackoff 2s 1s\n\t}\n}", 3, []string{"backoff", "2s", "1s"}},
		{"on unknown word", "resilient {\n\tretry {\n\t\ton connect_error sometimes\n\t}\n}", 3, []string{"on", "sometimes"}},
		{"on status 600", "resilient {\n\tretry {\n\t\ton 503 600\n\t}\n}", 3, []string{"on", "600"}},
		{"on without arguments", "resilient {\n\tretry {\n\t\ton\n\t}\n}", 3, []string{"on"}},
		{"methods with a slash", "resilient {\n\tretry {\n\t\tmethods GET PO/ST\n\t}\n}", 3, []string{"methods", "PO/ST"}},
		{"bad header name", "resilient {\n\tretry {\n\t\tidempotency_header Idem:Key\n\t}\n}", 3, []string{"idempotency_header", "Idem:Key"}},
		{"generate_idempotency_key with an argument", "resilient {\n\tretry {\n\t\tgenerate_idempotency_key yes\n\t}\n}", 3, []string{"yes"}},
		{"budget with one number", "resilient {\n\tretry {\n\t\tbudget 0.2\n\t}\n}", 3, []string{"budget", "1 arguments"}},
		{"budget negative ratio", "resilient {\n\tretry {\n\t\tbudget -0.5 10\n\t}\n}", 3, []string{"budget", "-0.5"}},
		{"budget garbage floor", "resilient {\n\tretry {\n\t\tbudget 0.2 many\n\t}\n}", 3, []string{"budget", "many"}},
		{"budget floor too high", "resilient {\n\tretry {\n\t\tbudget 0.2 5000\n\t}\n}", 3, []string{"budget", "5000", "1000"}},
		{"retry_after garbage", "resilient {\n\tretry {\n\t\tretry_after soon\n\t}\n}", 3, []string{"retry_after", "soon"}},
		{"max_body 0", "resilient {\n\tretry {\n\t\tmax_body 0\n\t}\n}", 3, []string{"max_body", "0"}},
		{"max_body garbage", "resilient {\n\tretry {\n\t\tmax_body lots\n\t}\n}", 3, []string{"max_body", "lots"}},
		{"failure_ratio 0", "resilient {\n\tbreaker {\n\t\tfailure_ratio 0\n\t}\n}", 3, []string{"failure_ratio", "0"}},
		{"failure_ratio 1.5", "resilient {\n\tbreaker {\n\t\tfailure_ratio 1.5\n\t}\n}", 3, []string{"failure_ratio", "1.5"}},
		{"min_requests 0", "resilient {\n\tbreaker {\n\t\tmin_requests 0\n\t}\n}", 3, []string{"min_requests", "0"}},
		{"consecutive_failures -1", "resilient {\n\tbreaker {\n\t\tconsecutive_failures -1\n\t}\n}", 3, []string{"consecutive_failures", "-1"}},
		{"window 0", "resilient {\n\tbreaker {\n\t\twindow 0\n\t}\n}", 3, []string{"window", "0"}},
		{"open_for garbage", "resilient {\n\tbreaker {\n\t\topen_for soon\n\t}\n}", 3, []string{"open_for", "soon"}},
		{"open_for longest garbage", "resilient {\n\tbreaker {\n\t\topen_for 1s later\n\t}\n}", 3, []string{"open_for", "later"}},
		{"open_for without a value", "resilient {\n\tbreaker {\n\t\topen_for\n\t}\n}", 3, []string{"open_for", "one or two durations", "got 0"}},
		{"open_for three values", "resilient {\n\tbreaker {\n\t\topen_for 1s 30s 1m\n\t}\n}", 3, []string{"open_for", "one or two durations", "got 3"}},
		{"open_for 0", "resilient {\n\tbreaker {\n\t\topen_for 0\n\t}\n}", 3, []string{"open_for", "positive", `"0"`}},
		{"open_for negative", "resilient {\n\tbreaker {\n\t\topen_for -1s 30s\n\t}\n}", 3, []string{"open_for", "-1s"}},
		{"open_for longest 0", "resilient {\n\tbreaker {\n\t\topen_for 1s 0s\n\t}\n}", 3, []string{"open_for", `"0s"`}},
		{"open_for longest shorter", "resilient {\n\tbreaker {\n\t\topen_for 30s 1s\n\t}\n}", 3, []string{"open_for", "longest", "1s", "shorter", "30s"}},
		{"open_for_max written", "resilient {\n\tbreaker {\n\t\topen_for_max 30s\n\t}\n}", 3, []string{"open_for_max", "open_for 1s 30s"}},
		{"open_for repeated", "resilient {\n\tbreaker {\n\t\topen_for 1s\n\t\topen_for 2s 4s\n\t}\n}", 4, []string{"open_for", "already specified"}},
		{"half_open_requests 0", "resilient {\n\tbreaker {\n\t\thalf_open_requests 0\n\t}\n}", 3, []string{"half_open_requests", "0"}},
		{"failure_status 99", "resilient {\n\tbreaker {\n\t\tfailure_status 500 99\n\t}\n}", 3, []string{"failure_status", "99"}},
		{"slow_call negative", "resilient {\n\tbreaker {\n\t\tslow_call -1s\n\t}\n}", 3, []string{"slow_call", "-1s"}},
		{"breaker maybe", "resilient {\n\tbreaker maybe\n}", 2, []string{"breaker", "maybe"}},
		{"breaker off with more", "resilient {\n\tbreaker off now\n}", 2, []string{"now"}},
		{"unknown in timeouts", "resilient {\n\ttimeouts {\n\t\tconnnect 3s\n\t}\n}", 3, []string{"timeouts", "connnect"}},
		{"unknown in pool", "resilient {\n\tpool {\n\t\tmax_connections 5\n\t}\n}", 3, []string{"pool", "max_connections"}},
		{"unknown in retry", "resilient {\n\tretry {\n\t\tattempt 3\n\t}\n}", 3, []string{"retry", "attempt"}},
		{"unknown in breaker", "resilient {\n\tbreaker {\n\t\tratio 0.5\n\t}\n}", 3, []string{"breaker", "ratio"}},
		{"unknown top level", "resilient {\n\tretry off\n\tretries 3\n}", 3, []string{"unrecognized subdirective", "retries", "did you mean", "retry"}},
		{"misspelled breaker", "resilient {\n\tcircuit {\n\t\topen_for 5s\n\t}\n}", 2, []string{"circuit", "did you mean", "breaker"}},
		{"misspelled timeouts", "resilient {\n\ttimeout {\n\t\tread 5s\n\t}\n}", 2, []string{"timeout", "did you mean", "timeouts"}},
		{"misspelled retry", "resilient {\n\tretyr {\n\t\tattempts 2\n\t}\n}", 2, []string{"retyr", "did you mean", "retry"}},
		{"rate_limit rate 0", "resilient {\n\trate_limit {\n\t\trate 0/s\n\t}\n}", 3, []string{"rate", "0/s", "zero"}},
		{"rate_limit rate without unit", "resilient {\n\trate_limit {\n\t\trate 100\n\t}\n}", 3, []string{"rate", "100"}},
		{"rate_limit rate per day", "resilient {\n\trate_limit {\n\t\trate 100/d\n\t}\n}", 3, []string{"rate", "100/d"}},
		{"rate_limit without rate", "resilient {\n\trate_limit {\n\t\tburst 5\n\t}\n}", 4, []string{"rate_limit", "rate", "required"}},
		{"rate_limit burst 0", "resilient {\n\trate_limit {\n\t\trate 1/s\n\t\tburst 0\n\t}\n}", 4, []string{"burst", "0"}},
		{"rate_limit max_wait negative", "resilient {\n\trate_limit {\n\t\trate 1/s\n\t\tmax_wait -1s\n\t}\n}", 4, []string{"max_wait", "-1s"}},
		{"rate_limit key not a placeholder", "resilient {\n\trate_limit {\n\t\trate 1/s\n\t\tkey tenant\n\t}\n}", 4, []string{"key", "tenant", "placeholder"}},
		{"rate_limit obey maybe", "resilient {\n\trate_limit {\n\t\trate 1/s\n\t\tobey_retry_after maybe\n\t}\n}", 4, []string{"obey_retry_after", "maybe"}},
		{"rate_limit unknown", "resilient {\n\trate_limit {\n\t\trate 1/s\n\t\tper_key yes\n\t}\n}", 4, []string{"rate_limit", "per_key"}},
		{"rate_limit argument", "resilient {\n\trate_limit 100/s\n}", 2, []string{"rate_limit", "100/s"}},
		{"fleet without redis", "resilient {\n\tfleet {\n\t\tprefix a\n\t}\n}", 4, []string{"fleet", "redis", "required"}},
		{"fleet bad scheme", "resilient {\n\tfleet {\n\t\tredis http://10.0.0.5:6379\n\t}\n}", 3, []string{"fleet"}},
		{"fleet timeout 0", "resilient {\n\tfleet {\n\t\tredis redis://127.0.0.1:6379\n\t\ttimeout 0\n\t}\n}", 4, []string{"timeout", "0"}},
		{"fleet unknown", "resilient {\n\tfleet {\n\t\tredis redis://127.0.0.1:6379\n\t\tpassword x\n\t}\n}", 4, []string{"fleet", "password"}},
		{"misspelled rate_limit", "resilient {\n\tratelimit {\n\t\trate 1/s\n\t}\n}", 2, []string{"ratelimit", "did you mean", "rate_limit"}},
		{"on 2xx", "resilient {\n\tretry {\n\t\ton 2xx\n\t}\n}", 3, []string{"on", "2xx", "4xx and 5xx"}},
		{"on 200", "resilient {\n\tretry {\n\t\ton 503 200\n\t}\n}", 3, []string{"on", "200"}},
		{"on 399", "resilient {\n\tretry {\n\t\ton 399\n\t}\n}", 3, []string{"on", "399"}},
		{"failure_status 200", "resilient {\n\tbreaker {\n\t\tfailure_status 200\n\t}\n}", 3, []string{"failure_status", "200"}},
		{"failure_status 3xx", "resilient {\n\tbreaker {\n\t\tfailure_status 500 3xx\n\t}\n}", 3, []string{"failure_status", "3xx"}},
		{"attempts 11", "resilient {\n\tretry {\n\t\tattempts 11\n\t}\n}", 3, []string{"attempts", "11", "10"}},
		{"attempts 1000000", "resilient {\n\tretry {\n\t\tattempts 1000000\n\t}\n}", 3, []string{"attempts", "1000000"}},
		{"attempt longer than total", "resilient {\n\ttimeouts {\n\t\tattempt 60s\n\t\ttotal 10s\n\t}\n}", 4, []string{"attempt", "total", "1m0s", "10s"}},
		{"total shorter than attempt", "resilient {\n\ttimeouts {\n\t\ttotal 10s\n\t\tattempt 60s\n\t}\n}", 4, []string{"attempt", "total"}},
		{"repeated option in a block", "resilient {\n\tretry {\n\t\tattempts 2\n\t\tattempts 3\n\t}\n}", 4, []string{"attempts", "already specified"}},
		{"repeated option in timeouts", "resilient {\n\ttimeouts {\n\t\tread 1s\n\t\tread 2s\n\t}\n}", 4, []string{"read", "already specified"}},
		{"repeated retry", "resilient {\n\tretry {\n\t\tattempts 2\n\t}\n\tretry off\n}", 5, []string{"retry", "already specified"}},
		{"repeated breaker", "resilient {\n\tbreaker off\n\tbreaker off\n}", 3, []string{"breaker", "already specified"}},
		{"retry maybe", "resilient {\n\tretry maybe\n}", 2, []string{"retry", "maybe"}},
		{"retry off with more", "resilient {\n\tretry off now\n}", 2, []string{"now"}},
		{"argument on the timeouts line", "resilient {\n\ttimeouts 5s\n}", 2, []string{"timeouts", "5s"}},
		{"timeouts duration garbage", "resilient {\n\ttimeouts {\n\t\tread forever\n\t}\n}", 3, []string{"read", "forever"}},
		{"timeouts zero", "resilient {\n\ttimeouts {\n\t\tconnect 0\n\t}\n}", 3, []string{"connect", "0"}},
		{"timeouts negative", "resilient {\n\ttimeouts {\n\t\ttotal -5s\n\t}\n}", 3, []string{"total", "-5s"}},
		{"negative max_conns", "resilient {\n\tpool {\n\t\tmax_conns -1\n\t}\n}", 3, []string{"max_conns", "-1"}},
		{"max_idle garbage", "resilient {\n\tpool {\n\t\tmax_idle some\n\t}\n}", 3, []string{"max_idle", "some"}},
		{"idle_timeout off", "resilient {\n\tpool {\n\t\tidle_timeout off\n\t}\n}", 3, []string{"idle_timeout", "off"}},
		// Caddy's own messages for `transport http` options name the value
		// and what it should be, not the option.
		{"bad dial_timeout", "resilient {\n\tdial_timeout abc\n}", 2, []string{"timeout", "abc"}},
		{"bad http option after ours", "resilient {\n\ttimeouts {\n\t\tread 5s\n\t}\n\tretry off\n\tkeepalive_idle_conns_per_host lots\n}", 6, []string{"lots"}},
		{"bad proxy_protocol", "resilient {\n\tbreaker off\n\tproxy_protocol v3\n}", 3, []string{"proxy protocol", "v3"}},
		{"idempotency header bad", "resilient {\n\tidempotency {\n\t\theader Idem:Key\n\t}\n}", 3, []string{"idempotency", "header", "Idem:Key"}},
		{"idempotency methods empty", "resilient {\n\tidempotency {\n\t\tmethods\n\t}\n}", 3, []string{"idempotency", "methods", "at least one"}},
		{"idempotency ttl 0", "resilient {\n\tidempotency {\n\t\tttl 0\n\t}\n}", 3, []string{"idempotency", "ttl", "0"}},
		{"idempotency max_response garbage", "resilient {\n\tidempotency {\n\t\tmax_response lots\n\t}\n}", 3, []string{"idempotency", "max_response", "lots"}},
		{"idempotency max_response over max_memory", "resilient {\n\tidempotency {\n\t\tmax_response 2MiB\n\t\tmax_memory 1MiB\n\t}\n}", 3, []string{"idempotency", "max_response 2MiB", "max_memory 1MiB", "max_memory 2MiB or more"}},
		{"idempotency max_response over max_memory written first", "resilient {\n\tidempotency {\n\t\tmax_memory 1000000\n\t\tmax_response 1MiB\n\t}\n}", 4, []string{"idempotency", "max_response 1MiB", "max_memory 1000000", "max_response 1000000 or less"}},
		{"idempotency max_response over the default max_memory", "resilient {\n\tidempotency {\n\t\tmax_response 100MiB\n\t}\n}", 3, []string{"idempotency", "max_response 100MiB", "not given", "64MiB", "max_memory 100MiB or more"}},
		{"idempotency wait negative", "resilient {\n\tidempotency {\n\t\twait -1s\n\t}\n}", 3, []string{"idempotency", "wait", "-1s"}},
		{"idempotency wait junk", "resilient {\n\tidempotency {\n\t\twait sometimes\n\t}\n}", 3, []string{"idempotency", "wait", "auto", "sometimes"}},
		{"idempotency complete_within junk", "resilient {\n\tidempotency {\n\t\tcomplete_within soon\n\t}\n}", 3, []string{"idempotency", "complete_within", "soon"}},
		{"idempotency complete_within 0", "resilient {\n\tidempotency {\n\t\tcomplete_within 0\n\t}\n}", 3, []string{"idempotency", "complete_within", "0"}},
		{"fallback stale junk", "resilient {\n\tfallback {\n\t\tstale forever\n\t}\n}", 3, []string{"fallback", "stale", "forever"}},
		{"fallback on unknown", "resilient {\n\tfallback {\n\t\ton breaker_open sometimes\n\t}\n}", 3, []string{"fallback", "on", "sometimes"}},
		{"fallback on 200", "resilient {\n\tfallback {\n\t\ton 200\n\t}\n}", 3, []string{"fallback", "on", "200"}},
		{"fallback methods bad", "resilient {\n\tfallback {\n\t\tmethods G/ET\n\t}\n}", 3, []string{"fallback", "methods", "G/ET"}},
		{"fallback max_response 0", "resilient {\n\tfallback {\n\t\tmax_response 0\n\t}\n}", 3, []string{"fallback", "max_response", "0"}},
		{"fallback max_response over max_memory", "resilient {\n\tfallback {\n\t\tmax_response 2MiB\n\t\tmax_memory 1MiB\n\t}\n}", 5, []string{"fallback", "max_response", "max_memory"}},
		{"fallback unknown option", "resilient {\n\tfallback {\n\t\tstal 1h\n\t}\n}", 3, []string{"fallback", "stal", "stale"}},
		{"fallback twice", "resilient {\n\tfallback\n\tfallback\n}", 3, []string{"fallback", "already"}},
		{"idempotency require yes", "resilient {\n\tidempotency {\n\t\trequire yes\n\t}\n}", 3, []string{"require", "yes"}},
		{"idempotency misspelled option", "resilient {\n\tidempotency {\n\t\tmax_respons 1MiB\n\t}\n}", 3, []string{"idempotency", "max_respons", "did you mean", "max_response"}},
		{"idempotency argument", "resilient {\n\tidempotency on\n}", 2, []string{"idempotency", "on"}},
		{"idempotency twice", "resilient {\n\tidempotency\n\tidempotency\n}", 3, []string{"idempotency", "already specified"}},
		// whole numbers, with the range in the message whatever is wrong
		{"attempts 3.5", "resilient {\n\tretry {\n\t\tattempts 3.5\n\t}\n}", 3, []string{"attempts", "whole number", "1", "10", "3.5"}},
		{"attempts 0 gives the range", "resilient {\n\tretry {\n\t\tattempts 0\n\t}\n}", 3, []string{"whole number from 1 to 10", "0"}},
		{"attempts 11 gives the range", "resilient {\n\tretry {\n\t\tattempts 11\n\t}\n}", 3, []string{"whole number from 1 to 10", "11"}},
		{"min_requests overflowing", "resilient {\n\tbreaker {\n\t\tmin_requests 99999999999999999999\n\t}\n}", 3, []string{"min_requests", "whole number", "99999999999999999999"}},
		{"half_open_requests too many", "resilient {\n\tbreaker {\n\t\thalf_open_requests 100000\n\t}\n}", 3, []string{"half_open_requests", "10000", "100000"}},
		{"burst 2.5", "resilient {\n\trate_limit {\n\t\trate 1/s\n\t\tburst 2.5\n\t}\n}", 4, []string{"burst", "whole number", "2.5"}},
		// a rate too large to count
		{"rate overflowing", "resilient {\n\trate_limit {\n\t\trate 99999999999999999999/s\n\t}\n}", 3, []string{"rate", "99999999999999999999/s", "too large"}},
		{"rate 2e6/s", "resilient {\n\trate_limit {\n\t\trate 2000000/s\n\t}\n}", 3, []string{"rate", "too large", "1000000/s"}},
		// stray arguments
		{"argument after transport resilient", "resilient extra {\n\tretry off\n}", 1, []string{"takes no arguments", "extra"}},
		{"methods without a value", "resilient {\n\tretry {\n\t\tmethods\n\t}\n}", 3, []string{"retry", "methods", "at least one"}},
		{"failure_status without a value", "resilient {\n\tbreaker {\n\t\tfailure_status\n\t}\n}", 3, []string{"breaker", "failure_status", "at least one"}},
		// a misspelled option inside a block gets a hint, as block names do
		{"misspelled attempts", "resilient {\n\tretry {\n\t\tattemps 2\n\t}\n}", 3, []string{"retry", "attemps", "did you mean", "attempts"}},
		{"misspelled connect", "resilient {\n\ttimeouts {\n\t\tconect 2s\n\t}\n}", 3, []string{"timeouts", "conect", "did you mean", "connect"}},
		{"misspelled max_conns", "resilient {\n\tpool {\n\t\tmax_con 2\n\t}\n}", 3, []string{"pool", "max_con", "did you mean", "max_conns"}},
		{"misspelled failure_ratio", "resilient {\n\tbreaker {\n\t\tfailure_ratoi 0.5\n\t}\n}", 3, []string{"breaker", "failure_ratoi", "did you mean", "failure_ratio"}},
		{"misspelled burst", "resilient {\n\trate_limit {\n\t\trate 1/s\n\t\tbrust 2\n\t}\n}", 4, []string{"rate_limit", "brust", "did you mean", "burst"}},
		{"misspelled prefix", "resilient {\n\tfleet {\n\t\tredis redis://127.0.0.1:6379\n\t\tprefx a\n\t}\n}", 4, []string{"fleet", "prefx", "did you mean", "prefix"}},
		{"unknown option lists the block's", "resilient {\n\tpool {\n\t\tsize 2\n\t}\n}", 3, []string{"pool", "size", "max_conns", "max_idle", "idle_timeout"}},
		{"send without a name", "resilient {\n\tdeadline {\n\t\tsend\n\t}\n}", 3, []string{"deadline", "send"}},
		{"send in hours", "resilient {\n\tdeadline {\n\t\tsend X-Left h\n\t}\n}", 3, []string{"deadline", "send", "h"}},
		{"send off with a unit", "resilient {\n\tdeadline {\n\t\tsend off ms\n\t}\n}", 3, []string{"deadline", "send off", "ms"}},
		{"send with a third value", "resilient {\n\tdeadline {\n\t\tsend X-Left ms now\n\t}\n}", 3, []string{"deadline", "send", "now"}},
		{"send a bad header name", "resilient {\n\tdeadline {\n\t\tsend X:Left\n\t}\n}", 3, []string{"deadline", "send", "X:Left"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cfUnmarshal(tc.input)
			if err == nil {
				t.Fatalf("no error for:\n%s", tc.input)
			}
			msg := err.Error()
			where := fmt.Sprintf(", at Testfile:%d", tc.line)
			if !strings.HasSuffix(msg, where) {
				t.Errorf("error %q does not end with %q", msg, where)
			}
			text := strings.TrimSuffix(msg, where)
			for _, w := range tc.want {
				if !cfMentions(text, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

func TestCaddyfileFleetErrorsNameTheBlockOnce(t *testing.T) {
	_, err := cfUnmarshal("resilient {\n\tfleet {\n\t\tredis http://10.0.0.5:6379\n\t}\n}")
	if err == nil || strings.Contains(err.Error(), "fleet: fleet") || !strings.Contains(err.Error(), "fleet: redis URL") {
		t.Errorf("error %v, want it to name the block once", err)
	}
	tr := &Transport{Fleet: &Fleet{Redis: "http://10.0.0.5:6379"}}
	if err := tr.Fleet.validate(); err == nil || strings.HasPrefix(err.Error(), "fleet:") {
		t.Errorf("validate: %v, want an error that leaves the block's name to its caller", err)
	}
}

func TestFleetRedisURLFromTheEnvironment(t *testing.T) {
	t.Setenv("RESILIENT_TEST_REDIS", "redis://:hunter2@127.0.0.1:6399/1")
	f := &Fleet{Redis: "{env.RESILIENT_TEST_REDIS}"}
	if err := f.validate(); err != nil {
		t.Fatal(err)
	}
	if got := f.options().URL; got != "redis://:hunter2@127.0.0.1:6399/1" {
		t.Fatalf("URL %q", got)
	}
	if _, err := cfUnmarshal("resilient {\n\tfleet {\n\t\tredis {env.RESILIENT_TEST_REDIS}\n\t}\n}"); err != nil {
		t.Fatalf("a placeholder refused at adapt time: %v", err)
	}
	t.Setenv("RESILIENT_TEST_REDIS", "")
	if err := f.validate(); err == nil {
		t.Fatal("an empty environment variable accepted")
	}
}

func TestCaddyfileFleetErrorsHideThePassword(t *testing.T) {
	for _, url := range []string{"redis://:hunter2@10.0.0.5:99999/2", "redis://user:hunter2@/0", "rediss://:hunter2@host:6379/x"} {
		_, err := cfUnmarshal("resilient {\n\tfleet {\n\t\tredis " + url + "\n\t}\n}")
		if err == nil {
			t.Fatalf("%s accepted", url)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("the error shows the password: %v", err)
		}
	}
}

// cfMentions reports whether word appears in msg on its own, not as
// part of a longer word or number, so that "0" is not found in "10s".
func cfMentions(msg, word string) bool {
	inWord := func(c byte) bool {
		return c == '_' || c == '.' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	}
	for i := 0; ; {
		j := strings.Index(msg[i:], word)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(word)
		before := start == 0 || !inWord(msg[start-1])
		after := end == len(msg) || !inWord(msg[end]) || msg[end] == '.' && (end+1 == len(msg) || !inWord(msg[end+1]))
		if before && after {
			return true
		}
		i = start + 1
	}
}

// cfLoad adapts input with UnmarshalCaddyfile, encodes it to JSON and
// loads it as Caddy does (decode, Provision, Validate). The module is
// cleaned up when the test ends.
func cfLoad(t *testing.T, input string) *Transport {
	t.Helper()
	tr, err := cfUnmarshal(input)
	if err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	raw, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	mod, err := ctx.LoadModuleByID("http.reverse_proxy.transport.resilient", raw)
	if err != nil {
		t.Fatalf("loading %s: %v", raw, err)
	}
	return mod.(*Transport)
}

func TestCaddyfileProvisionDefaults(t *testing.T) {
	tr := cfLoad(t, "resilient {\n\ttls\n}")

	d := func(v caddy.Duration) time.Duration { return time.Duration(v) }
	check := func(name string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}

	to := tr.Timeouts
	check("timeouts.write", d(to.Write), 10*time.Second)
	check("timeouts.read", d(to.Read), 30*time.Second)
	check("timeouts.pool", d(to.Pool), time.Second)
	check("timeouts.attempt", d(to.Attempt), 10*time.Second)
	check("timeouts.total", d(to.Total), 30*time.Second)
	check("dial_timeout", d(tr.DialTimeout), 3*time.Second)

	rt := tr.HTTPTransport.Transport
	check("TLSHandshakeTimeout", rt.TLSHandshakeTimeout, 5*time.Second)
	check("MaxIdleConnsPerHost", rt.MaxIdleConnsPerHost, 32)
	check("IdleConnTimeout", rt.IdleConnTimeout, 2*time.Minute)
	check("pool.max_conns", tr.Pool.MaxConns, 0)

	r := tr.Retry
	check("retry.disabled", r.Disabled, false)
	check("retry.attempts", r.Attempts, 3)
	check("retry.backoff.first", d(r.Backoff.First), 25*time.Millisecond)
	check("retry.backoff.max", d(r.Backoff.Max), time.Second)
	check("retry.on", r.On, []string{"connect_error", "tls_error", "reset", "408", "429", "502", "503", "504"})
	check("retry.methods", r.Methods, []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
	check("retry idempotency header", r.keyHeader, "Idempotency-Key")
	check("retry.generate_idempotency_key", r.GenerateIdempotencyKey, false)
	check("retry.retry_after", d(r.RetryAfter), 10*time.Second)
	check("retry.budget.disabled", r.Budget.Disabled, false)
	check("retry.budget.ratio", *r.Budget.Ratio, 0.2)
	check("retry.budget.min_per_second", *r.Budget.MinPerSecond, 10)
	check("retry.max_body", r.MaxBody, int64(1<<20))

	b := tr.Breaker
	check("breaker.disabled", b.Disabled, false)
	check("breaker.failure_ratio", b.FailureRatio, 0.5)
	check("breaker.min_requests", b.MinRequests, 20)
	check("breaker.consecutive_failures", *b.ConsecutiveFailures, 5)
	check("breaker.window", d(b.Window), 10*time.Second)
	check("breaker.open_for", d(b.OpenFor), time.Second)
	check("breaker.open_for_max", d(b.OpenForMax), 30*time.Second)
	check("breaker.half_open_requests", b.HalfOpenRequests, 3)
	check("breaker.failure_status", b.FailureStatus, []string{"500", "502", "503", "504"})
	check("breaker.slow_call", d(b.SlowCall), time.Duration(0))
}

// An idempotency block with one size written provisions to what it
// says, the other size following it: max_memory alone (below the
// default max_response) makes max_response as large; max_response
// alone keeps the default max_memory.
func TestCaddyfileProvisionIdempotencySizes(t *testing.T) {
	for input, want := range map[string][2]int64{
		"max_memory 64KiB":                           {64 << 10, 64 << 10},
		"max_memory 1MB":                             {1_000_000, 1_000_000},
		"max_memory 200MiB":                          {1 << 20, 200 << 20},
		"max_response 512KiB":                        {512 << 10, 64 << 20},
		"max_response 64MiB":                         {64 << 20, 64 << 20},
		"max_response 100MiB\n\t\tmax_memory 128MiB": {100 << 20, 128 << 20},
	} {
		t.Run(input, func(t *testing.T) {
			tr := cfLoad(t, "resilient {\n\tidempotency {\n\t\t"+input+"\n\t}\n}")
			if got := [2]int64{tr.Idempotency.MaxResponse, tr.Idempotency.MaxMemory}; got != want {
				t.Errorf("max_response, max_memory = %v, want %v", got, want)
			}
		})
	}
}

// TestCaddyfileProvisionPrecedence checks how our options and the
// matching `transport http` options combine: the http option applies
// when ours is not set, and ours wins when both are.
func TestCaddyfileProvisionPrecedence(t *testing.T) {
	t.Run("http options apply when ours are unset", func(t *testing.T) {
		tr := cfLoad(t, "resilient {\n\tdial_timeout 7s\n\tkeepalive_idle_conns_per_host 5\n\tkeepalive 45s\n\ttls_timeout 8s\n}")
		if got := time.Duration(tr.DialTimeout); got != 7*time.Second {
			t.Errorf("dial timeout = %v, want 7s", got)
		}
		rt := tr.HTTPTransport.Transport
		if rt.MaxIdleConnsPerHost != 5 {
			t.Errorf("MaxIdleConnsPerHost = %d, want 5", rt.MaxIdleConnsPerHost)
		}
		if rt.IdleConnTimeout != 45*time.Second {
			t.Errorf("IdleConnTimeout = %v, want 45s", rt.IdleConnTimeout)
		}
		if rt.TLSHandshakeTimeout != 8*time.Second {
			t.Errorf("TLSHandshakeTimeout = %v, want 8s", rt.TLSHandshakeTimeout)
		}
	})
	t.Run("ours win over http options", func(t *testing.T) {
		tr := cfLoad(t, "resilient {\n\tdial_timeout 7s\n\ttls_timeout 8s\n\ttimeouts {\n\t\tconnect 2s\n\t\ttls 4s\n\t}\n}")
		if got := time.Duration(tr.DialTimeout); got != 2*time.Second {
			t.Errorf("dial timeout = %v, want 2s", got)
		}
		if got := tr.HTTPTransport.Transport.TLSHandshakeTimeout; got != 4*time.Second {
			t.Errorf("TLSHandshakeTimeout = %v, want 4s", got)
		}
	})
	t.Run("pool settings reach the http transport", func(t *testing.T) {
		tr := cfLoad(t, "resilient {\n\tpool {\n\t\tmax_idle 0\n\t\tidle_timeout 15s\n\t}\n}")
		rt := tr.HTTPTransport.Transport
		if rt.MaxIdleConnsPerHost >= 0 {
			t.Errorf("MaxIdleConnsPerHost = %d, want < 0 (keep none)", rt.MaxIdleConnsPerHost)
		}
		if rt.IdleConnTimeout != 15*time.Second {
			t.Errorf("IdleConnTimeout = %v, want 15s", rt.IdleConnTimeout)
		}
	})
	t.Run("timeouts off", func(t *testing.T) {
		tr := cfLoad(t, "resilient {\n\ttls\n\ttimeouts {\n\t\tconnect off\n\t\ttls off\n\t}\n}")
		if got := time.Duration(tr.DialTimeout); got < 24*time.Hour {
			t.Errorf("dial timeout = %v, want no practical bound", got)
		}
		if got := tr.HTTPTransport.Transport.TLSHandshakeTimeout; got != 0 {
			t.Errorf("TLSHandshakeTimeout = %v, want 0 (none)", got)
		}
	})
	t.Run("retry off leaves one attempt", func(t *testing.T) {
		tr := cfLoad(t, "resilient {\n\tretry off\n}")
		if tr.Retry.Attempts != 1 {
			t.Errorf("attempts = %d, want 1", tr.Retry.Attempts)
		}
	})
	t.Run("idempotency header is canonical", func(t *testing.T) {
		tr := cfLoad(t, "resilient {\n\tretry {\n\t\tidempotency_header x-request-key\n\t}\n}")
		if got := tr.Retry.keyHeader; got != http.CanonicalHeaderKey("X-Request-Key") {
			t.Errorf("idempotency header = %q, want X-Request-Key", got)
		}
	})
}

// TestCaddyfileValidateJSON checks that values only JSON can express are
// refused when the module loads, with the field named.
func TestCaddyfileValidateJSON(t *testing.T) {
	for _, tc := range []struct {
		json string
		want []string
	}{
		{`{"retry":{"attempts":-1}}`, []string{"retry", "attempts", "-1"}},
		{`{"retry":{"on":["bogus"]}}`, []string{"retry", "on", "bogus"}},
		{`{"retry":{"backoff":{"first":"2s","max":"1s"}}}`, []string{"retry", "backoff"}},
		{`{"retry":{"backoff":{"first":-1}}}`, []string{"retry", "backoff"}},
		{`{"retry":{"methods":["GET POST"]}}`, []string{"retry", "methods", "GET POST"}},
		{`{"retry":{"budget":{"ratio":-1}}}`, []string{"retry", "budget", "ratio", "-1"}},
		{`{"retry":{"budget":{"min_per_second":-1}}}`, []string{"retry", "budget", "min_per_second", "-1"}},
		{`{"retry":{"max_body":-1}}`, []string{"retry", "max_body", "-1"}},
		{`{"breaker":{"failure_ratio":2}}`, []string{"breaker", "failure_ratio", "2"}},
		{`{"breaker":{"failure_ratio":-0.5}}`, []string{"breaker", "failure_ratio", "-0.5"}},
		{`{"breaker":{"min_requests":-5}}`, []string{"breaker", "min_requests", "-5"}},
		{`{"breaker":{"consecutive_failures":-1}}`, []string{"breaker", "consecutive_failures", "-1"}},
		{`{"breaker":{"window":"-1s"}}`, []string{"breaker", "window"}},
		{`{"breaker":{"open_for":-1}}`, []string{"breaker", "open_for"}},
		{`{"breaker":{"open_for":"5s","open_for_max":"2s"}}`, []string{"breaker", "open_for_max", "5s", "2s"}},
		{`{"breaker":{"open_for_max":"-1s"}}`, []string{"breaker", "open_for_max", "-1s"}},
		{`{"breaker":{"half_open_requests":-1}}`, []string{"breaker", "half_open_requests", "-1"}},
		{`{"breaker":{"failure_status":["99"]}}`, []string{"breaker", "failure_status", "99"}},
		{`{"breaker":{"slow_call":"-1s"}}`, []string{"breaker", "slow_call"}},
		{`{"pool":{"max_conns":-1}}`, []string{"pool", "max_conns", "-1"}},
		{`{"pool":{"idle_timeout":"-1s"}}`, []string{"pool", "idle_timeout"}},
		{`{"retry":{"tries":3}}`, []string{"tries"}},
		{`{"retry":{"on":["2xx"]}}`, []string{"retry", "on", "2xx"}},
		{`{"retry":{"on":["503","200"]}}`, []string{"retry", "on", "200"}},
		{`{"breaker":{"failure_status":["200"]}}`, []string{"breaker", "failure_status", "200"}},
		{`{"retry":{"attempts":1000000}}`, []string{"retry", "attempts", "1000000"}},
		{`{"timeouts":{"attempt":"60s","total":"10s"}}`, []string{"timeouts", "attempt", "total"}},
		{`{"timeouts":{"attempt":"60s","total":"30s"}}`, []string{"timeouts", "attempt", "total"}},
		{`{"rate_limit":{}}`, []string{"rate_limit", "rate", "required"}},
		{`{"rate_limit":{"rate":"0/s"}}`, []string{"rate_limit", "rate", "0/s"}},
		{`{"rate_limit":{"rate":"1/s","burst":-1}}`, []string{"rate_limit", "burst", "-1"}},
		{`{"rate_limit":{"rate":"1/s","max_wait":-5}}`, []string{"rate_limit", "max_wait"}},
		{`{"rate_limit":{"rate":"1/s","key":"tenant"}}`, []string{"rate_limit", "key", "tenant"}},
		{`{"rate_limit":{"rate":"99999999999999999999/s"}}`, []string{"rate_limit", "rate", "too large"}},
		{`{"idempotency":{"header":"a b"}}`, []string{"idempotency", "header", "a b"}},
		{`{"idempotency":{"methods":[]}}`, []string{"idempotency", "methods"}},
		{`{"idempotency":{"ttl":-1}}`, []string{"idempotency", "ttl"}},
		{`{"idempotency":{"wait":"-1s"}}`, []string{"idempotency", "wait"}},
		{`{"idempotency":{"max_response":2048,"max_memory":1024}}`, []string{"idempotency", "max_response 2KiB", "max_memory 1KiB"}},
		{`{"idempotency":{"max_response":104857600}}`, []string{"idempotency", "max_response 100MiB", "64MiB", "max_memory 100MiB or more"}},
		{`{"rate_limit":{"rate":"1/s","burst":2000000000}}`, []string{"rate_limit", "burst", "2000000000"}},
		{`{"breaker":{"half_open_requests":5000000000}}`, []string{"breaker", "half_open_requests", "5000000000"}},
		{`{"breaker":{"min_requests":5000000000}}`, []string{"breaker", "min_requests", "5000000000"}},
		{`{"pool":{"max_conns":5000000000}}`, []string{"pool", "max_conns", "5000000000"}},
		{`{"deadline":{"send":"X-Left","send_unit":"h"}}`, []string{"deadline", "send_unit", "h"}},
		{`{"deadline":{"send":"X Left"}}`, []string{"deadline", "X Left"}},
	} {
		t.Run(tc.json, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			_, err := ctx.LoadModuleByID("http.reverse_proxy.transport.resilient", json.RawMessage(tc.json))
			if err == nil {
				t.Fatalf("no error for %s", tc.json)
			}
			for _, w := range tc.want {
				if !cfMentions(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	t.Run("valid", func(t *testing.T) {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		raw := `{"timeouts":{"read":"5s","connect":-1},"retry":{"attempts":1,"on":["5xx"]},"breaker":{"consecutive_failures":0}}`
		if _, err := ctx.LoadModuleByID("http.reverse_proxy.transport.resilient", json.RawMessage(raw)); err != nil {
			t.Fatalf("loading %s: %v", raw, err)
		}
	})
	// a default never contradicts a bound written out
	for raw, want := range map[string][2]time.Duration{
		`{"timeouts":{"total":"5s"}}`:    {5 * time.Second, 5 * time.Second},
		`{"timeouts":{"attempt":"45s"}}`: {45 * time.Second, 45 * time.Second},
		`{"timeouts":{"total":-1}}`:      {10 * time.Second, -1},
	} {
		t.Run(raw, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			mod, err := ctx.LoadModuleByID("http.reverse_proxy.transport.resilient", json.RawMessage(raw))
			if err != nil {
				t.Fatalf("loading %s: %v", raw, err)
			}
			to := mod.(*Transport).Timeouts
			if got := [2]time.Duration{time.Duration(to.Attempt), time.Duration(to.Total)}; got != want {
				t.Fatalf("attempt, total = %v, want %v", got, want)
			}
		})
	}
}

// TestCaddyfileProvisionSpecExampleIsDefault checks that the SPEC §3
// example, which spells out the defaults, provisions to the same
// settings as an empty block. generate_idempotency_key is left out: it
// is shown switched on although it is off by default.
func TestCaddyfileProvisionSpecExampleIsDefault(t *testing.T) {
	example := cfLoad(t, `resilient {
		tls
		timeouts {
			connect 3s
			tls     5s
			write   10s
			read    30s
			pool    1s
			attempt 10s
			total   30s
		}
		pool {
			max_conns    0
			max_idle     32
			idle_timeout 2m
		}
		retry {
			attempts 3
			backoff  25ms 1s
			on connect_error tls_error reset 408 429 502 503 504
			methods GET HEAD OPTIONS TRACE PUT DELETE
			idempotency_header Idempotency-Key
			retry_after 10s
			budget 0.2 10
			max_body 1MiB
		}
		breaker {
			failure_ratio        0.5
			min_requests         20
			consecutive_failures 5
			window               10s
			open_for             1s 30s
			half_open_requests   3
			failure_status       500 502 503 504
			slow_call            0
		}
	}`)
	empty := cfLoad(t, "resilient {\n\ttls\n}")

	ex, em := example.HTTPTransport.Transport, empty.HTTPTransport.Transport
	for _, c := range []struct {
		name     string
		got, def any
	}{
		{"dial timeout", example.DialTimeout, empty.DialTimeout},
		{"TLSHandshakeTimeout", ex.TLSHandshakeTimeout, em.TLSHandshakeTimeout},
		{"MaxIdleConnsPerHost", ex.MaxIdleConnsPerHost, em.MaxIdleConnsPerHost},
		{"IdleConnTimeout", ex.IdleConnTimeout, em.IdleConnTimeout},
		{"pool", *example.Pool, *empty.Pool},
		{"timeouts.write", example.Timeouts.Write, empty.Timeouts.Write},
		{"timeouts.read", example.Timeouts.Read, empty.Timeouts.Read},
		{"timeouts.pool", example.Timeouts.Pool, empty.Timeouts.Pool},
		{"timeouts.attempt", example.Timeouts.Attempt, empty.Timeouts.Attempt},
		{"timeouts.total", example.Timeouts.Total, empty.Timeouts.Total},
		{"breaker", *example.Breaker, *empty.Breaker},
	} {
		if !reflect.DeepEqual(c.got, c.def) {
			t.Errorf("%s: example gives %+v, default is %+v", c.name, c.got, c.def)
		}
	}
	r, d := *example.Retry, *empty.Retry
	r.IdempotencyHeader = "" // same header, spelled out
	r.Budget, d.Budget = nil, nil
	if !reflect.DeepEqual(r, d) {
		t.Errorf("retry: example gives %+v, default is %+v", r, d)
	}
	if !reflect.DeepEqual(*example.Retry.Budget, *empty.Retry.Budget) {
		t.Errorf("retry.budget: example gives %+v, default is %+v", *example.Retry.Budget, *empty.Retry.Budget)
	}
}
