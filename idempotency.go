package resilient

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-resilient/resilient/fleet"
	"github.com/caddy-resilient/resilient/idempotency"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"github.com/redis/go-redis/v9"
)

// Idempotency makes the gateway itself keep the records of
// Idempotency-Key (draft-ietf-httpapi-idempotency-key-header-07), for
// providers that do not: a keyed request of Methods is sent upstream at
// most once per key, and every repeat gets the first one's answer
// (Idempotent-Replayed: true), a 409 while the first is in flight, or a
// 422 when the key comes with another request. Records are kept in this
// process and, with Fleet, in the fleet's Redis, so that a repeat to any
// instance is caught. Off unless configured.
//
// The records of every transport live in one store per process (see
// idempotency.Memory), so that a config reload keeps every record,
// whatever settings it changes, adds or removes (fleet included): each
// request's record is kept for its own transport's TTL, and the store's
// memory bound is the largest MaxMemory among the transports that use
// it, applied as soon as a reload takes effect.
type Idempotency struct {
	// The request header that carries the key. Default: `Idempotency-Key`.
	Header string `json:"header,omitempty"`

	// Requests of these methods that carry the header are deduplicated;
	// others pass through, key or not. Default: `["POST","PATCH"]`.
	Methods []string `json:"methods,omitempty"`

	// Keys are per value of these placeholders, so that two callers
	// who pick the same key never see each other's answers. The values
	// are hashed with the key, never kept or logged in clear.
	// Default: `["{http.request.host}","{http.request.header.Authorization}"]`.
	Scope []string `json:"scope,omitempty"`

	// How long a completed key's answer is kept. Default: `24h`.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// Answers up to this many bytes (body) are kept whole; a larger one
	// streams to its client as usual, and the record keeps its status
	// and headers only: a repeat gets 409, the key being used. At most
	// max_memory. Default: `1048576` (1MiB), or max_memory when that is
	// smaller.
	MaxResponse int64 `json:"max_response,omitempty"`

	// The bytes of all answers kept in this process (one store for every
	// transport: its bound is the largest max_memory among them); past
	// it the oldest completed records are dropped first. Records in
	// flight are never dropped. Default: `67108864` (64MiB).
	MaxMemory int64 `json:"max_memory,omitempty"`

	// A repeat while the first is in flight waits for the first's answer
	// up to this long, never past its own deadline (timeouts.total, or
	// the caller's deadline with `deadline`), and gets it as a replay;
	// when the wait runs out, 409 with Retry-After. 0 answers 409 at once.
	// Omitted (`auto` in the Caddyfile): as long as the repeat's own
	// deadline allows. Default: auto.
	Wait *caddy.Duration `json:"wait,omitempty"`

	// Once sent, the first request with a key is carried to the
	// upstream's answer for up to this long from its sending, whatever
	// its client's deadline: a client answered 504 at its deadline
	// (executed maybe) does not make the gateway abandon the upstream,
	// whose answer is kept for the repeat. Default: `2m`.
	CompleteWithin caddy.Duration `json:"complete_within,omitempty"`

	// A request of Methods without the header gets 400. Default: `false`.
	Require bool `json:"require,omitempty"`

	header  string // canonical
	store   idempotency.Store
	unlimit func() // lets go of MaxMemory as a bound of the store
	fleetID string // the fleet store used, "" for none
}

// Defaults of the idempotency block.
var (
	defaultKeyMethods = []string{"POST", "PATCH"}
	defaultKeyScope   = []string{"{http.request.host}", "{http.request.header.Authorization}"}
)

const (
	defaultMaxResponse    = 1 << 20
	defaultCompleteWithin = 2 * time.Minute
)

// idempotencyStores holds the process's record store across config
// reloads: the Memory under memoryStoreKey, and a fleet store over it
// per fleet (keyed by its id), so that a reload keeps every record, in
// flight or completed, and a transport that gains or loses its fleet
// still finds the records it kept itself.
var idempotencyStores = caddy.NewUsagePool()

const memoryStoreKey = "memory"

// recordMemory is the Memory in idempotencyStores.
type recordMemory struct{ *idempotency.Memory }

// Destruct implements caddy.Destructor: no config keeps records any more.
func (m recordMemory) Destruct() error {
	m.Close()
	return nil
}

// recordFleet is a fleet store in idempotencyStores. It has nothing to
// let go: the leases it renews end with their requests.
type recordFleet struct{ idempotency.Store }

// Destruct implements caddy.Destructor.
func (recordFleet) Destruct() error { return nil }

func (ix *Idempotency) provision(fl *fleetLink) error {
	if ix.Header == "" {
		ix.Header = "Idempotency-Key"
	}
	ix.header = http.CanonicalHeaderKey(ix.Header)
	if ix.Methods == nil {
		ix.Methods = defaultKeyMethods
	}
	for i, m := range ix.Methods {
		ix.Methods[i] = strings.ToUpper(m)
	}
	if ix.Scope == nil {
		ix.Scope = defaultKeyScope
	}
	if ix.TTL == 0 {
		ix.TTL = caddy.Duration(idempotency.DefaultTTL)
	}
	if ix.CompleteWithin == 0 {
		ix.CompleteWithin = caddy.Duration(defaultCompleteWithin)
	}
	if err := ix.validate(); err != nil {
		return err
	}
	if ix.MaxMemory == 0 {
		ix.MaxMemory = idempotency.DefaultMaxMemory
	}
	if ix.MaxResponse == 0 {
		ix.MaxResponse = min(defaultMaxResponse, ix.MaxMemory)
	}
	v, _, err := idempotencyStores.LoadOrNew(memoryStoreKey, func() (caddy.Destructor, error) {
		return recordMemory{idempotency.NewMemory(idempotency.Config{})}, nil
	})
	if err != nil {
		return err
	}
	mem := v.(recordMemory).Memory
	ix.store, ix.unlimit = mem, mem.Limit(ix.MaxMemory)
	if fl != nil {
		v, _, err := idempotencyStores.LoadOrNew("fleet:"+fl.id, func() (caddy.Destructor, error) {
			return recordFleet{idempotency.NewFleet(mem, fleetRecords{id: fl.id}, fl.logger)}, nil
		})
		if err != nil {
			return err
		}
		ix.store, ix.fleetID = v.(recordFleet).Store, fl.id
	}
	return nil
}

// validate checks what the JSON config gives; the Caddyfile's parser
// checks the same, naming file and line.
func (ix *Idempotency) validate() error {
	if !isToken(ix.Header) {
		return fmt.Errorf("header: %q is not a header name", ix.Header)
	}
	if len(ix.Methods) == 0 {
		return fmt.Errorf("methods: at least one method, e.g. POST PATCH")
	}
	for _, m := range ix.Methods {
		if !isToken(m) {
			return fmt.Errorf("methods: %q is not an HTTP method", m)
		}
	}
	switch {
	case ix.TTL < 0:
		return fmt.Errorf("ttl must be a positive duration, got %v", time.Duration(ix.TTL))
	case ix.MaxResponse < 0:
		return fmt.Errorf("max_response must be a positive size, got %d", ix.MaxResponse)
	case ix.MaxMemory < 0:
		return fmt.Errorf("max_memory must be a positive size, got %d", ix.MaxMemory)
	case ix.Wait != nil && *ix.Wait < 0:
		return fmt.Errorf("wait must be auto or a duration >= 0, got %v", time.Duration(*ix.Wait))
	case ix.CompleteWithin < 0:
		return fmt.Errorf("complete_within must be a positive duration, got %v", time.Duration(ix.CompleteWithin))
	}
	return sizesAgree(ix.MaxResponse, ix.MaxMemory)
}

// sizesAgree checks max_response against max_memory (0: not given): no
// answer larger than the store could be kept whole.
func sizesAgree(maxResponse, maxMemory int64) error {
	switch {
	case maxResponse == 0 || maxResponse <= maxMemory:
		return nil
	case maxMemory == 0 && maxResponse > idempotency.DefaultMaxMemory:
		return fmt.Errorf("max_response %s is larger than max_memory, which is not given (its default is %s): an answer that large could never be kept; give max_memory %s or more, or a smaller max_response",
			iBytes(maxResponse), iBytes(idempotency.DefaultMaxMemory), iBytes(maxResponse))
	case maxMemory != 0:
		return fmt.Errorf("max_response %s is larger than max_memory %s: an answer that large could never be kept; give max_memory %s or more, or max_response %s or less",
			iBytes(maxResponse), iBytes(maxMemory), iBytes(maxResponse), iBytes(maxMemory))
	}
	return nil
}

// iBytes writes a size as the Caddyfile takes it: exact (1MiB, 1000000).
func iBytes(n int64) string {
	for _, u := range []struct {
		unit string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.unit
		}
	}
	return strconv.FormatInt(n, 10)
}

// cleanup lets go of the store: its records stay for the next config,
// and its MaxMemory no longer bounds the store.
func (ix *Idempotency) cleanup() {
	if ix.unlimit != nil {
		ix.unlimit()
		ix.unlimit = nil
	}
	if ix.fleetID != "" {
		_, _ = idempotencyStores.Delete("fleet:" + ix.fleetID)
		ix.fleetID = ""
	}
	if ix.store != nil {
		_, _ = idempotencyStores.Delete(memoryStoreKey)
		ix.store = nil
	}
}

// fleetRecords is the fleet's Redis as the idempotency records use it:
// through the membership of the config that joined the fleet last, as
// the breakers do (see relink), so a reload that makes a new member
// moves the records to it.
type fleetRecords struct{ id string }

func (r fleetRecords) member() *fleet.Member {
	fleetLinks.Lock()
	defer fleetLinks.Unlock()
	if l := fleetLinks.latest[r.id]; l != nil {
		return l.member
	}
	return nil
}

// Do implements idempotency.Remote.
func (r fleetRecords) Do(ctx context.Context, op string, fn func(context.Context, redis.Scripter) error) error {
	m := r.member()
	if m == nil {
		return fleet.ErrNotConnected
	}
	return m.Do(ctx, op, fn)
}

// Key implements idempotency.Remote.
func (r fleetRecords) Key(name string) string {
	if m := r.member(); m != nil {
		return m.Key(name)
	}
	return name
}

// idempotencyOptions are the options of the idempotency block.
var idempotencyOptions = []string{"header", "methods", "scope", "ttl", "max_response", "max_memory", "wait", "complete_within", "require"}

func parseIdempotency(d *caddyfile.Dispenser) (*Idempotency, error) {
	ix := new(Idempotency)
	var respAt *caddyfile.Dispenser // where max_response is written
	size := func(opt string) (int64, error) {
		v, err := oneArg(d, "idempotency", opt)
		if err != nil {
			return 0, err
		}
		n, perr := humanize.ParseBytes(v)
		if perr != nil || n == 0 || n > 1<<40 {
			return 0, d.Errf("idempotency: %s must be a positive size such as 1MiB, got %q", opt, v)
		}
		return int64(n), nil
	}
	err := block(d, func(opt string) error {
		var err error
		switch opt {
		case "header":
			v, err := oneArg(d, "idempotency", opt)
			if err != nil {
				return err
			}
			if !isToken(v) {
				return d.Errf("idempotency: header: %q is not a header name", v)
			}
			ix.Header = v
		case "methods":
			args, err := manyArgs(d, "idempotency", opt, "HTTP methods such as POST PATCH")
			if err != nil {
				return err
			}
			for i, m := range args {
				if !isToken(m) {
					return d.Errf("idempotency: methods: %q is not an HTTP method", m)
				}
				args[i] = strings.ToUpper(m)
			}
			ix.Methods = args
		case "scope":
			ix.Scope, err = manyArgs(d, "idempotency", opt, "placeholders such as {http.request.header.Authorization}")
		case "ttl":
			ix.TTL, err = duration(d, "idempotency", opt, false)
		case "max_response":
			ix.MaxResponse, err = size(opt)
			at := *d
			respAt = &at
		case "max_memory":
			ix.MaxMemory, err = size(opt)
		case "wait":
			v, err := oneArg(d, "idempotency", opt)
			if err != nil {
				return err
			}
			if v == "auto" {
				ix.Wait = nil
				return nil
			}
			dur, perr := caddy.ParseDuration(v)
			if perr != nil || dur < 0 {
				return d.Errf("idempotency: wait must be auto, or a duration >= 0 (0: answer 409 at once), got %q", v)
			}
			w := caddy.Duration(dur)
			ix.Wait = &w
		case "complete_within":
			ix.CompleteWithin, err = duration(d, "idempotency", opt, false)
		case "require":
			if err := noArgs(d, "idempotency", opt); err != nil {
				return err
			}
			ix.Require = true
		default:
			return unknownOption(d, "idempotency", opt, idempotencyOptions)
		}
		return err
	})
	if err != nil {
		return ix, err
	}
	if err := sizesAgree(ix.MaxResponse, ix.MaxMemory); err != nil {
		return nil, respAt.Errf("idempotency: %v", err)
	}
	return ix, nil
}
