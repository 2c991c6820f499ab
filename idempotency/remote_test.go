package idempotency

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-resilient/resilient/fleet"
	"github.com/caddy-resilient/resilient/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// *fleet.Member is what the transport hands NewFleet.
var _ Remote = (*fleet.Member)(nil)

// testTimeout is the Remote's patience with Redis in these tests.
const testTimeout = 100 * time.Millisecond

// errDown is the adapter's ErrNotConnected.
var errDown = errors.New("test remote: redis is down")

// redisRemote is a Remote over a go-redis client of the test's own, with
// *fleet.Member's contract: each call bounded by the timeout; a failure
// (not redis.Nil) counted and, unless Redis answered it, taken for Redis
// down, so that later calls fail at once, counted too, until a ping
// (tried at most every 50ms, in place of the fleet's heartbeat) answers
// again. Every
// instance of a test has its own, as each process has its own member.
type redisRemote struct {
	rdb    *redis.Client
	prefix string

	mu       sync.Mutex
	down     bool
	lastPing time.Time

	calls  atomic.Int64 // Do calls that reached Redis
	failed atomic.Int64 // failures counted
}

func newRemote(t *testing.T, rs *redistest.Server, prefix string) *redisRemote {
	rdb := redis.NewClient(&redis.Options{
		Addr: rs.Addr(), Protocol: 2, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		DialTimeout:              testTimeout, ReadTimeout: testTimeout, WriteTimeout: testTimeout, PoolTimeout: testTimeout,
		ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1,
	})
	t.Cleanup(func() { rdb.Close() })
	return &redisRemote{rdb: rdb, prefix: prefix}
}

func (r *redisRemote) Do(ctx context.Context, op string, fn func(context.Context, redis.Scripter) error) error {
	if r.isDown() {
		if ctx.Err() == nil {
			r.failed.Add(1)
		}
		return errDown
	}
	r.calls.Add(1)
	rctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	err := fn(rctx, r.rdb)
	if err == nil || errors.Is(err, redis.Nil) || gaveUp(ctx) {
		return err
	}
	r.failed.Add(1)
	if rerr := redis.Error(nil); !errors.As(err, &rerr) {
		r.mu.Lock()
		r.down, r.lastPing = true, time.Now()
		r.mu.Unlock()
	}
	return err
}

func (r *redisRemote) isDown() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.down || time.Since(r.lastPing) < 50*time.Millisecond {
		return r.down
	}
	r.lastPing = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	r.down = r.rdb.Ping(ctx).Err() != nil
	return r.down
}

func (r *redisRemote) Key(name string) string { return r.prefix + ":" + name }

// TestRemoteAdapter checks the adapter the fleet tests stand on: it
// fails fast once Redis failed, and comes back once Redis answers.
func TestRemoteAdapter(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	r := newRemote(t, rs, "p")
	ping := func(ctx context.Context, c redis.Scripter) error {
		return redis.NewScript(`return 1`).Run(ctx, c, nil).Err()
	}
	if err := r.Do(bg, opName, ping); err != nil {
		t.Fatal(err)
	}
	rs.Kill()
	if err := r.Do(bg, opName, ping); err == nil || r.failed.Load() != 1 {
		t.Fatalf("Redis killed: %v, %d failures", err, r.failed.Load())
	}
	start := time.Now()
	if err := r.Do(bg, opName, ping); err != errDown || time.Since(start) > 5*time.Millisecond || r.failed.Load() != 2 {
		t.Fatalf("Redis known down: %v after %s, %d failures", err, time.Since(start), r.failed.Load())
	}
	rs.Start()
	waitFor(t, 2*time.Second, "the adapter back", func() bool { return r.Do(bg, opName, ping) == nil })
}
