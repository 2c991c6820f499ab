// Package fleet is the Redis side of fleet mode: Caddy instances that
// share a Redis and a prefix share their breaker trips, operator
// overrides and rate limits.
//
// Redis is never in the way. Join does not wait for Redis; every
// operation is bounded by Options.Timeout; what the request path calls
// (Reserve, Pause, PublishOverride) fails at once while Redis is known to
// be down, and PublishBreaker never waits at all. A failure is the
// caller's cue to act alone; a background loop notices when Redis answers
// again and the member rejoins by itself.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// ErrNotConnected is returned, without waiting, by the operations that
// need Redis while it is known not to answer.
var ErrNotConnected = errors.New("fleet: redis not connected")

// defaultLinger is how long a member outlives its last Release, so that a
// config reload that releases it before joining again keeps its client,
// subscription and place in the fleet.
const defaultLinger = 5 * time.Second

// process holds this process's members. Tests make registries of their
// own to stand for several processes.
var process = newRegistry(defaultLinger)

// registry is one process's view of its fleets: its instance id, its
// members (one per Options) and the Redis clients they share.
type registry struct {
	id     string
	linger time.Duration

	mu      sync.Mutex
	members map[Options]*Member
	clients map[clientKey]*sharedClient
}

// clientKey says which members may share a Redis client: the client's
// socket timeouts are those of its members.
type clientKey struct {
	url     string
	timeout time.Duration
}

// sharedClient is a go-redis client (a connection pool) and the number
// of members using it.
type sharedClient struct {
	rdb  *redis.Client
	refs int
}

func newRegistry(linger time.Duration) *registry {
	return &registry{
		id:      newID(),
		linger:  linger,
		members: make(map[Options]*Member),
		clients: make(map[clientKey]*sharedClient),
	}
}

// newID returns a random instance id, led by the host name so that an
// operator reading the members set can tell the instances apart.
func newID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "caddy"
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// Member is this process's place in one fleet. It is shared by every
// config that joins the same fleet with the same Options, and it lives
// from the first Join to shortly after the last Release.
type Member struct {
	reg   *registry
	opts  Options
	show  string // the URL, redacted
	rdb   *redis.Client
	names names
	log   atomic.Pointer[zap.Logger]

	refs   int         // guarded by reg.mu
	linger *time.Timer // guarded by reg.mu; set while refs is 0
	gen    uint64      // guarded by reg.mu; tells one linger from the next

	ctx    context.Context // ends when the member is closed
	cancel context.CancelFunc
	wg     sync.WaitGroup

	health    health
	subs      subscriber
	breakers  breakerSide
	overrides overrideSide
}

// Join returns this process's member of the fleet that opts name, for the
// caller to Release when its config stops. It never waits on Redis: the
// member connects, and reconnects, in the background.
func Join(opts Options, logger *zap.Logger) (*Member, error) {
	return process.join(opts, logger)
}

func (r *registry) join(opts Options, logger *zap.Logger) (*Member, error) {
	opts = opts.withDefaults()
	ro, err := opts.redisOptions()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	logger = logger.With(zap.String("redis", opts.Redacted()), zap.String("prefix", opts.Prefix))

	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.members[opts]; m != nil {
		m.refs++
		if m.linger != nil {
			m.linger.Stop()
			m.linger = nil
		}
		m.log.Store(logger) // the newest config's logger
		return m, nil
	}

	ck := clientKey{opts.URL, opts.Timeout}
	c := r.clients[ck]
	if c == nil {
		c = &sharedClient{rdb: redis.NewClient(ro)}
		r.clients[ck] = c
	}
	c.refs++

	m := &Member{
		reg:   r,
		opts:  opts,
		show:  opts.Redacted(),
		rdb:   c.rdb,
		names: newNames(opts.Prefix),
		refs:  1,
	}
	m.log.Store(logger)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.health.init()
	m.breakers.init()
	m.overrides.init()
	connectedGauge.WithLabelValues(m.show, opts.Prefix).Set(0)
	r.members[opts] = m

	m.wg.Add(3)
	go m.healthLoop()
	go m.subscribeLoop()
	go m.publishLoop()
	return m, nil
}

// Release gives back what Join gave. The member stays a few seconds
// after its last Release, for the next config to pick up.
func (m *Member) Release() {
	r := m.reg
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.refs == 0 {
		return // released more often than joined: nothing more to give
	}
	m.refs--
	if m.refs > 0 {
		return
	}
	m.gen++
	gen := m.gen
	m.linger = time.AfterFunc(r.linger, func() { r.expire(m, gen) })
}

// expire closes m if the linger gen ran out with nobody joining.
func (r *registry) expire(m *Member, gen uint64) {
	r.mu.Lock()
	if m.refs > 0 || m.linger == nil || m.gen != gen || r.members[m.opts] != m {
		r.mu.Unlock()
		return
	}
	delete(r.members, m.opts)
	m.linger = nil
	r.mu.Unlock()

	m.close()

	r.mu.Lock()
	defer r.mu.Unlock()
	ck := clientKey{m.opts.URL, m.opts.Timeout}
	if c := r.clients[ck]; c != nil {
		c.refs--
		if c.refs == 0 {
			delete(r.clients, ck)
			_ = c.rdb.Close()
		}
	}
}

// close stops the member's loops and leaves the fleet, so that the
// others count one member fewer at once rather than a heartbeat TTL later.
//
// Another member of this process with the same URL and prefix (a reload
// that changed the timeout joined anew) is this instance in the same
// fleet, under the same instance id and metric series: those stay its.
func (m *Member) close() {
	m.cancel()
	m.wg.Wait()
	r := m.reg
	r.mu.Lock()
	twin := r.twin(m)
	r.mu.Unlock()
	if m.health.connected.Load() && !twin {
		ctx, cancel := context.WithTimeout(context.Background(), m.opts.Timeout)
		_ = m.rdb.ZRem(ctx, m.names.members, m.reg.id).Err()
		cancel()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.twin(m) {
		connectedGauge.DeleteLabelValues(m.show, m.opts.Prefix)
		transitionsTotal.DeletePartialMatch(map[string]string{"redis": m.show, "prefix": m.opts.Prefix})
	}
}

// twin reports whether r has a member other than m in m's fleet: the
// same URL and prefix, another timeout. r.mu must be held.
func (r *registry) twin(m *Member) bool {
	for o, other := range r.members {
		if other != m && o.URL == m.opts.URL && o.Prefix == m.opts.Prefix {
			return true
		}
	}
	return false
}

// ID returns this process's instance id: what Origin says of the states
// and overrides it publishes, and its entry in the fleet's member set.
func (m *Member) ID() string { return m.reg.id }

// logger returns the logger of the newest config that joined.
func (m *Member) logger() *zap.Logger { return m.log.Load() }

// sleep waits d, and reports false if the member closed meanwhile.
func (m *Member) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-m.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// signal wakes whoever waits on ch, without waiting itself: ch has room
// for one signal, and one pending signal is as good as several.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// opError is a failed Redis operation, as the caller sees it: its text
// is scrubbed of the password, and it unwraps to what go-redis returned.
type opError struct {
	msg string
	err error
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() error { return e.err }

// fail handles the failure of op on the request path: unless the caller
// gave up first, it is counted and the member acts alone until the next
// heartbeat says otherwise.
func (m *Member) fail(caller context.Context, op string, err error) error {
	if caller.Err() == nil {
		countError(op)
		m.markDown(caller, err)
	}
	return &opError{msg: "fleet: " + op + ": " + m.opts.scrub(err), err: err}
}
