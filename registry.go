package resilient

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// breakers holds every breaker in use, across config reloads, keyed by
// upstream and settings. Transports take a reference on the breakers of
// the upstreams they send to, and drop it in Cleanup.
var breakers = caddy.NewUsagePool()

// breakersByAddr indexes the breakers in the registry by upstream
// address, for the admin API and the selection policy, which look
// breakers up without holding a reference. Its slices are replaced, never
// changed in place, so a reader may keep one after unlocking.
var breakersByAddr = struct {
	sync.RWMutex
	m map[string][]*breaker
}{m: make(map[string][]*breaker)}

// acquireBreaker returns the shared breaker for upstream under cfg,
// creating it on first use. Each call must be paired with release.
func acquireBreaker(cfg *Breaker, upstream string, logger *zap.Logger, fl *fleetLink) *breaker {
	key := upstream + "|" + cfg.key()
	if fl != nil {
		// a breaker follows at most one fleet
		key += "|" + fl.id
	}
	v, _, _ := breakers.LoadOrNew(key, func() (caddy.Destructor, error) {
		b := newBreaker(cfg, upstream, key)
		b.label = holdLabel(upstream) // its series last as long as it does
		if fl != nil {
			b.fleet.Store(fl)
			b.remote.Store(pendingRemote(fl, upstream, cfg.key()))
		}
		breakersByAddr.Lock()
		breakersByAddr.m[upstream] = append(slices.Clip(breakersByAddr.m[upstream]), b)
		breakersByAddr.Unlock()
		return b, nil
	})
	b := v.(*breaker)
	if logger != nil {
		b.logger.Store(logger)
	}
	if fl != nil {
		// not in the constructor, which holds the pool's entry locked
		b.fleet.Store(fleetLinks.current(fl))
	}
	return b
}

// lookupBreakers returns the breakers of the upstream at addr (one per
// distinct settings), without taking a reference.
func lookupBreakers(addr string) []*breaker {
	breakersByAddr.RLock()
	defer breakersByAddr.RUnlock()
	return breakersByAddr.m[addr]
}

// allBreakers returns every breaker in the registry, ordered by upstream.
func allBreakers() []*breaker {
	breakersByAddr.RLock()
	var all []*breaker
	for _, bs := range breakersByAddr.m {
		all = append(all, bs...)
	}
	breakersByAddr.RUnlock()
	slices.SortFunc(all, func(a, b *breaker) int { return strings.Compare(a.key, b.key) })
	return all
}

// Destruct implements caddy.Destructor: the registry let go of b.
func (b *breaker) Destruct() error {
	releaseLabel(b.upstream, b.label)
	b.ov.release()
	breakersByAddr.Lock()
	defer breakersByAddr.Unlock()
	rest := slices.DeleteFunc(slices.Clone(breakersByAddr.m[b.upstream]), func(o *breaker) bool { return o == b })
	if len(rest) == 0 {
		delete(breakersByAddr.m, b.upstream)
	} else {
		breakersByAddr.m[b.upstream] = rest
	}
	return nil
}

// release drops a reference taken by acquireBreaker. The registry keeps
// the breaker a while longer, for as long as its state means something
// (the rest of its open period, or one window of counts): a config
// reload provisions the new transports, which take their references only
// when they first send to the upstream, and cleans up the old ones
// before that; without the delay every reload would close every breaker.
func (b *breaker) release() {
	if d := b.linger(time.Now()); d > 0 {
		time.AfterFunc(d, b.drop)
		return
	}
	b.drop()
}

func (b *breaker) drop() { _, _ = breakers.Delete(b.key) }

func (b *breaker) linger(now time.Time) time.Duration {
	return max(time.Duration(b.cfg.Window), b.openLeft(now))
}
