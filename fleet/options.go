package fleet

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap/zapcore"
)

// Defaults for the fields of Options left empty.
const (
	DefaultPrefix  = "resilient"
	DefaultTimeout = 50 * time.Millisecond
)

// redacted stands in for a password wherever a URL is shown. It is what
// net/url's URL.Redacted writes, so both read the same.
const redacted = "xxxxx"

// Options say which fleet to join. Instances whose URL and Prefix are
// equal form one fleet; Timeout is this instance's own patience with Redis.
type Options struct {
	// URL of the Redis server: redis:// or rediss:// (TLS), optionally
	// with user:password@ and a database number as the path, e.g.
	// redis://:secret@10.0.0.5:6379/2. It takes no query parameters, so
	// that the timeouts are ours alone and no secret hides in a query.
	URL string

	// Prefix namespaces every key and channel in Redis.
	// Default: `resilient`.
	Prefix string

	// Timeout bounds each Redis operation (dial included); past it the
	// instance acts alone. Default: `50ms`.
	Timeout time.Duration
}

// withDefaults returns o with its empty fields filled in.
func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	return o
}

// Validate reports what is wrong with o, empty fields taking their
// defaults. Its errors show the URL redacted: config errors end up in
// logs and in the admin API, where a password must never appear.
func (o Options) Validate() error {
	_, err := o.withDefaults().redisOptions()
	return err
}

// redisOptions checks o (defaults applied) and builds the go-redis
// options. The URL is parsed here rather than by redis.ParseURL, whose
// errors can quote the URL, and so the password.
func (o Options) redisOptions() (*redis.Options, error) {
	if o.URL == "" {
		return nil, errors.New("fleet: redis URL is required")
	}
	show := o.Redacted()
	u, err := url.Parse(o.URL)
	if err != nil {
		// url.Parse's error quotes the URL and can quote a misplaced
		// piece of the password (say, one holding an unescaped '/').
		return nil, fmt.Errorf("fleet: redis URL %s does not parse: check the host and port, and percent-encode special characters in the password", show)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("fleet: redis URL %s: scheme must be redis or rediss", show)
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return nil, fmt.Errorf("fleet: redis URL %s: a host is required, as in redis://host:6379/0", show)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || strings.Contains(o.URL, "#") {
		return nil, fmt.Errorf("fleet: redis URL %s: query parameters and fragments are not supported (percent-encode '?' and '#' in a password)", show)
	}
	port := u.Port()
	if port == "" {
		port = "6379"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("fleet: redis URL %s: port must be 1-65535", show)
	}
	db := 0
	if p := strings.TrimPrefix(u.Path, "/"); p != "" {
		// The path is not quoted: it may be the tail of a password
		// holding an unescaped '/'.
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("fleet: redis URL %s: the path must be a database number such as /0", show)
		}
		db = n
	}
	if o.Prefix == "" || strings.ContainsFunc(o.Prefix, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return nil, fmt.Errorf("fleet: prefix %q must be non-empty and hold no spaces or control characters", o.Prefix)
	}
	if o.Timeout <= 0 {
		return nil, fmt.Errorf("fleet: timeout must be positive, got %s", o.Timeout)
	}

	ro := &redis.Options{
		Addr:       net.JoinHostPort(u.Hostname(), port),
		DB:         db,
		ClientName: "caddy-resilient",
		// RESP2 and no identity or maintenance-notification commands:
		// the fewest round trips to set up a connection, which must fit
		// in Timeout like everything else.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},

		// No operation may outlast Timeout: not a dial, a read, a write
		// or a wait for a pooled connection, and nothing is retried
		// (v9: -1 disables retries, 0 means the default of 3).
		DialTimeout:           o.Timeout,
		ReadTimeout:           o.Timeout,
		WriteTimeout:          o.Timeout,
		PoolTimeout:           o.Timeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		// One dial per try (a value <= 0 means the default of 5,
		// 100ms apart). The pool redials in the background on its own.
		DialerRetries: 1,
	}
	if u.User != nil {
		ro.Username = u.User.Username()
		ro.Password, _ = u.User.Password()
	}
	if u.Scheme == "rediss" {
		ro.TLSConfig = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	return ro, nil
}

// Redacted returns the URL with its password replaced by "xxxxx", for
// logs and the admin API. It redacts even a URL that does not parse:
// everything between "://" and the last '@' is taken as the user info.
func (o Options) Redacted() string {
	s := o.URL
	i := strings.Index(s, "://")
	if i < 0 {
		if strings.Contains(s, "@") {
			// Not a URL we could read: show nothing of it but that.
			return redacted
		}
		return s
	}
	rest := s[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return s
	}
	return s[:i+3] + user + ":" + redacted + rest[at:]
}

// String shows o with its URL redacted, so that printing Options by
// mistake leaks nothing.
func (o Options) String() string {
	o = o.withDefaults()
	return fmt.Sprintf("redis=%s prefix=%s timeout=%s", o.Redacted(), o.Prefix, o.Timeout)
}

// MarshalLogObject lets zap log Options (zap.Object) with the URL
// redacted; zap.Any would otherwise write every field as it is.
func (o Options) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	o = o.withDefaults()
	enc.AddString("redis", o.Redacted())
	enc.AddString("prefix", o.Prefix)
	enc.AddDuration("timeout", o.Timeout)
	return nil
}

// scrub returns err's text with the password, if any, replaced: a last
// guard for errors that come from the network or the Redis server.
func (o Options) scrub(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	u, perr := url.Parse(o.URL)
	if perr != nil || u.User == nil {
		return msg
	}
	if p, ok := u.User.Password(); ok && p != "" {
		msg = strings.ReplaceAll(msg, p, redacted)
		if e := url.PathEscape(p); e != p {
			msg = strings.ReplaceAll(msg, e, redacted)
		}
	}
	return msg
}
