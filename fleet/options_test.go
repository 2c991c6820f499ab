package fleet

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		opts Options
		err  string // "" for valid
	}{
		{Options{URL: "redis://127.0.0.1:6379/0"}, ""},
		{Options{URL: "redis://cache.internal"}, ""},
		{Options{URL: "rediss://gateway:s3cret@cache.internal:6380/3", Prefix: "egress", Timeout: 200 * time.Millisecond}, ""},
		{Options{URL: "redis://:p%40ss%2Fword@[::1]:6379/"}, ""},
		{Options{}, "redis URL is required"},
		{Options{URL: "http://u:s3cret@host:6379"}, "scheme must be redis or rediss"},
		{Options{URL: "unix:///run/redis.sock"}, "scheme must be redis or rediss"},
		{Options{URL: "redis://:s3cret@:6379/0"}, "a host is required"},
		{Options{URL: "redis://u:s3cret@host:99999/0"}, "port must be 1-65535"},
		{Options{URL: "redis://u:s3cret@host/zero"}, "the path must be a database number"},
		{Options{URL: "redis://u:s3cret@host/0?dial_timeout=5s"}, "query parameters"},
		// A password holding an unescaped '/' or '#' splits the URL
		// elsewhere: the error must not quote its pieces.
		{Options{URL: "redis://u:s3c/ret@host:6379/0"}, "does not parse"},
		{Options{URL: "redis://u:12/s3cret@host/0"}, "the path must be a database number"},
		{Options{URL: "redis://u:s3c#ret@host/0"}, "does not parse"},
		{Options{URL: "redis://host", Prefix: "has space"}, "prefix"},
		{Options{URL: "redis://host", Timeout: -time.Second}, "timeout must be positive"},
	} {
		err := tc.opts.Validate()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.opts.Redacted(), err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one saying %q", tc.opts.Redacted(), err, tc.err)
		}
		if err != nil {
			for _, secret := range []string{"s3cret", "s3c", "ret@", "12/"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error for %s shows the password (%q): %v", tc.opts.Redacted(), secret, err)
				}
			}
		}
	}
}

func TestRedacted(t *testing.T) {
	for in, want := range map[string]string{
		"redis://127.0.0.1:6379/0":             "redis://127.0.0.1:6379/0",
		"redis://gateway@cache:6379/0":         "redis://gateway@cache:6379/0",
		"redis://:s3cret@cache:6379/0":         "redis://:xxxxx@cache:6379/0",
		"rediss://gateway:s3cret@cache:6380/2": "rediss://gateway:xxxxx@cache:6380/2",
		"redis://u:p%40ss@cache":               "redis://u:xxxxx@cache",
		"redis://u:s3c/ret@cache:6379/0":       "redis://u:xxxxx@cache:6379/0",
		"redis://u:s3c#r@et@cache/0":           "redis://u:xxxxx@cache/0",
		"not a url with s3cret@cache":          "xxxxx",
		"":                                     "",
	} {
		o := Options{URL: in}
		if got := o.Redacted(); got != want {
			t.Errorf("Redacted(%q) = %q, want %q", in, got, want)
		}
	}
}

// Options printed or logged by mistake show no password.
func TestOptionsDoNotLeak(t *testing.T) {
	o := Options{URL: "redis://gateway:s3cret@cache:6379/0"}
	log, logs := observed()
	log.Info("config", zap.Object("fleet", o), zap.Stringer("opts", o))
	for _, s := range []string{o.String(), fmt.Sprint(o), fmt.Sprintf("%v", o)} {
		if strings.Contains(s, "s3cret") {
			t.Errorf("printed options show the password: %s", s)
		}
	}
	if e := mentions(logs, "s3cret"); e != "" {
		t.Errorf("logged options show the password: %s", e)
	}
	if mentions(logs, "gateway:xxxxx@cache") == "" {
		t.Errorf("logged options do not show the redacted URL: %v", logs.All())
	}
}

// The go-redis client is set up so that no operation outlasts the timeout.
func TestRedisOptionsBoundedByTimeout(t *testing.T) {
	o := Options{URL: "redis://:s3cret@cache:6379/4", Timeout: 80 * time.Millisecond}
	ro, err := o.withDefaults().redisOptions()
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]time.Duration{"dial": ro.DialTimeout, "read": ro.ReadTimeout, "write": ro.WriteTimeout, "pool": ro.PoolTimeout} {
		if d != o.Timeout {
			t.Errorf("%s timeout = %s, want %s", name, d, o.Timeout)
		}
	}
	if ro.MaxRetries != -1 || ro.DialerRetries != 1 || !ro.ContextTimeoutEnabled {
		t.Errorf("retries not disabled or context timeouts ignored: MaxRetries %d, DialerRetries %d, ContextTimeoutEnabled %v", ro.MaxRetries, ro.DialerRetries, ro.ContextTimeoutEnabled)
	}
	if ro.Addr != "cache:6379" || ro.DB != 4 || ro.Password != "s3cret" {
		t.Errorf("addr %q db %d password set %v", ro.Addr, ro.DB, ro.Password == "s3cret")
	}
}
