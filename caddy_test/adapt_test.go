package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-resilient/resilient"
)

// adaptDir holds the golden files: a Caddyfile, a line of dashes, then
// either the JSON it adapts to or the text of the error it must give.
const adaptDir = "testdata/adapt"

// adaptSeparator separates the Caddyfile from the expectation.
const adaptSeparator = "----------"

// TestAdaptGoldenFiles adapts every golden Caddyfile, compares the result
// with the expected JSON, and checks that the JSON loads: every module
// decodes strictly, provisions and validates, as `caddy validate` does.
func TestAdaptGoldenFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(adaptDir, "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no golden files in %s", adaptDir)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfileText, expected, ok := strings.Cut(strings.ReplaceAll(string(data), "\r\n", "\n"), adaptSeparator)
			if !ok {
				t.Fatalf("%s: no %s line", file, adaptSeparator)
			}
			caddyfileText = strings.TrimSpace(caddyfileText) + "\n"
			expected = strings.TrimSpace(expected)

			if !strings.HasPrefix(expected, "{") {
				_, err := adaptCaddyfile(caddyfileText)
				if err == nil {
					t.Fatalf("adapted without error; want an error containing %q", expected)
				}
				if !strings.Contains(err.Error(), expected) {
					t.Fatalf("error %q does not contain %q", err, expected)
				}
				return
			}

			if !caddytest.CompareAdapt(t, file, caddyfileText, "caddyfile", expected) {
				t.Fatalf("%s does not adapt to the expected JSON (diff on stdout)", file)
			}
			adapted, err := adaptCaddyfile(caddyfileText)
			if err != nil {
				t.Fatal(err)
			}
			adaptRoundTrip(t, adapted)
			adaptValidate(t, adapted)
		})
	}
}

// adaptCaddyfile adapts a Caddyfile to JSON with Caddy's own adapter.
func adaptCaddyfile(text string) ([]byte, error) {
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), nil)
	return out, err
}

// adaptValidate loads the whole config without starting it, like
// `caddy validate`: modules are decoded strictly, provisioned, validated
// and cleaned up.
func adaptValidate(t *testing.T, adapted []byte) {
	t.Helper()
	var cfg *caddy.Config
	if err := caddy.StrictUnmarshalJSON(adapted, &cfg); err != nil {
		t.Fatalf("decoding config: %v", err)
	}
	if err := caddy.Validate(cfg); err != nil {
		t.Fatalf("adapted config does not load: %v\n%s", err, adapted)
	}
}

// adaptRoundTrip checks that each resilient transport in the adapted JSON
// decodes into the module and encodes back to the same JSON, so nothing
// the adapter writes is lost or renamed.
func adaptRoundTrip(t *testing.T, adapted []byte) {
	t.Helper()
	transports := adaptTransports(t, adapted)
	found := false
	for _, raw := range transports {
		var obj map[string]any
		if err := json.Unmarshal(raw, &obj); err != nil {
			t.Fatal(err)
		}
		if obj["protocol"] != "resilient" {
			continue
		}
		found = true
		delete(obj, "protocol")
		stripped, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		var tr resilient.Transport
		if err := caddy.StrictUnmarshalJSON(stripped, &tr); err != nil {
			t.Fatalf("transport %s does not decode: %v", raw, err)
		}
		again, err := json.Marshal(&tr)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := adaptCanonical(t, again), adaptCanonical(t, stripped); got != want {
			t.Errorf("transport does not round-trip:\n got  %s\n want %s", got, want)
		}
	}
	if !found {
		t.Errorf("no resilient transport in %s", adapted)
	}
}

// adaptTransports returns the transport of every reverse_proxy handler
// in the adapted config, however deeply its route is nested.
func adaptTransports(t *testing.T, adapted []byte) []json.RawMessage {
	t.Helper()
	var doc any
	if err := json.Unmarshal(adapted, &doc); err != nil {
		t.Fatal(err)
	}
	var out []json.RawMessage
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "reverse_proxy" && v["transport"] != nil {
				raw, err := json.Marshal(v["transport"])
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, raw)
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	return out
}

// adaptCanonical re-encodes JSON with sorted keys.
func adaptCanonical(t *testing.T, doc []byte) string {
	t.Helper()
	var v any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("invalid JSON %s: %v", doc, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestAdaptSameAsTransportHTTP checks the promise that `transport
// resilient` holding only `transport http` options adapts to the same
// JSON as `transport http`, but for the protocol name.
func TestAdaptSameAsTransportHTTP(t *testing.T) {
	for _, tc := range []struct {
		name, upstream, options string
	}{
		{"https upstream, no options", "https://api.example.com", ""},
		{"h2c upstream, no options", "h2c://localhost:9000", ""},
		{"plain upstream", "localhost:9000", `
			dial_timeout 2s
			keepalive 30s
			keepalive_idle_conns_per_host 8
			read_buffer 8KiB
			versions 1.1 2`},
		{"tls options", "https://api.example.com", `
			tls_server_name api.example.com
			tls_insecure_skip_verify
			tls_timeout 4s
			response_header_timeout 20s
			max_conns_per_host 50
			compression off`},
		{"tls on a plain upstream", "api.example.com:443", `
			tls
			tls_trust_pool file {
				pem_file /etc/ssl/ca.pem
			}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			site := func(protocol string) string {
				return ":8080 {\n\treverse_proxy " + tc.upstream + " {\n\t\ttransport " + protocol +
					" {" + tc.options + "\n\t\t}\n\t}\n}\n"
			}
			httpJSON, err := adaptCaddyfile(site("http"))
			if err != nil {
				t.Fatalf("transport http: %v", err)
			}
			resJSON, err := adaptCaddyfile(site("resilient"))
			if err != nil {
				t.Fatalf("transport resilient: %v", err)
			}
			ht, rt := adaptTransports(t, httpJSON), adaptTransports(t, resJSON)
			if len(ht) != 1 || len(rt) != 1 {
				t.Fatalf("want one transport each, got %d (http) and %d (resilient)", len(ht), len(rt))
			}
			var h, r map[string]any
			if err := json.Unmarshal(ht[0], &h); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(rt[0], &r); err != nil {
				t.Fatal(err)
			}
			if h["protocol"] != "http" || r["protocol"] != "resilient" {
				t.Fatalf("protocols: %v and %v", h["protocol"], r["protocol"])
			}
			delete(h, "protocol")
			delete(r, "protocol")
			if !reflect.DeepEqual(h, r) {
				t.Errorf("transports differ:\n http      %s\n resilient %s", ht[0], rt[0])
			}
			// and the rest of the config is the same
			same := bytes.Replace(resJSON, []byte(`"protocol":"resilient"`), []byte(`"protocol":"http"`), 1)
			if adaptCanonical(t, same) != adaptCanonical(t, httpJSON) {
				t.Errorf("configs differ beyond the transport:\n http      %s\n resilient %s", httpJSON, resJSON)
			}
		})
	}
}
