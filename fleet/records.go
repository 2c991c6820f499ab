package fleet

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Do runs fn against the fleet's Redis, for state that another package
// keeps there under the fleet's prefix (the idempotency records): fn gets
// a context bounded by the fleet's timeout and a client that runs Lua
// scripts, so that each step it takes is one atomic round trip.
//
// While Redis is known to be down, Do fails at once with
// ErrNotConnected, and counts the operation under op in
// caddy_resilient_fleet_errors_total: the caller acts alone for it (a
// record kept on this instance only), and the counter shows for how
// many. A failure of fn other than redis.Nil (a missing key is an
// answer) is counted the same way and, unless Redis answered it (a
// redis.Error), marks Redis down until the heartbeat sees it answer
// again, so that the requests after it act alone at once instead of
// each waiting out the timeout. A caller that gave up first is not
// counted: that says nothing of Redis.
func (m *Member) Do(ctx context.Context, op string, fn func(context.Context, redis.Scripter) error) error {
	if !m.health.connected.Load() {
		if ctx.Err() == nil {
			countError(op)
		}
		return ErrNotConnected
	}
	rctx, cancel := context.WithTimeout(ctx, m.opts.Timeout)
	defer cancel()
	err := fn(rctx, m.rdb)
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		// The caller's deadline, not Redis, ended fn: the socket's
		// deadline may fire a moment before ctx says so.
		<-ctx.Done()
	}
	return m.fail(ctx, op, err)
}

// Key names a Redis key under the fleet's prefix: prefix + ":" + name,
// as every key of the fleet is (see names).
func (m *Member) Key(name string) string { return m.names.prefix + ":" + name }
