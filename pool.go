package resilient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Pool limits the connections kept and used per upstream.
type Pool struct {
	// The most requests in flight to one upstream at a time, and so the
	// most connections in use. A request that finds them all taken waits
	// up to timeouts.pool for one, then fails with pool_timeout without
	// touching the upstream. 0 means no limit. Default: `0`.
	MaxConns int `json:"max_conns,omitempty"`

	// How many idle keep-alive connections are kept per upstream; a
	// negative value keeps none. The `transport http` option
	// keepalive_idle_conns_per_host is used when this is not set.
	// Default: `32`.
	MaxIdle int `json:"max_idle,omitempty"`

	// How long an idle keep-alive connection is kept. The `transport
	// http` option keepalive_idle_timeout is used when this is not set.
	// Default: `2m`.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
}

func (p *Pool) setDefaults() {
	if p.MaxIdle == 0 {
		p.MaxIdle = 32
	}
	if p.IdleTimeout == 0 {
		p.IdleTimeout = caddy.Duration(2 * time.Minute)
	}
}

func (p *Pool) validate() error {
	if p.MaxConns < 0 || p.MaxConns > maxCount {
		return fmt.Errorf("max_conns must be a whole number from 0 to %d, got %d", maxCount, p.MaxConns)
	}
	if p.IdleTimeout < 0 {
		return fmt.Errorf("idle_timeout must be > 0, got %v", time.Duration(p.IdleTimeout))
	}
	return nil
}

// slots is a counting semaphore bounding the requests in flight to one
// upstream; nil means unlimited.
type slots chan struct{}

func newSlots(n int) slots {
	if n <= 0 {
		return nil
	}
	return make(slots, n)
}

var errNoSlot = errors.New("no slot")

// acquire takes a slot, waiting at most wait (0: as long as ctx lets
// it). It returns how long it waited; errNoSlot when the wait ran out,
// or ctx's error.
func (s slots) acquire(ctx context.Context, wait time.Duration) (time.Duration, error) {
	if s == nil {
		return 0, nil
	}
	select {
	case s <- struct{}{}:
		return 0, nil
	default:
	}
	start := time.Now()
	var expired <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		expired = t.C
	}
	select {
	case s <- struct{}{}:
		return time.Since(start), nil
	case <-expired:
		return time.Since(start), errNoSlot
	case <-ctx.Done():
		return time.Since(start), context.Cause(ctx)
	}
}

// tryAcquire takes a slot if one is free now.
func (s slots) tryAcquire() bool {
	if s == nil {
		return true
	}
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s slots) release() {
	if s != nil {
		<-s
	}
}
