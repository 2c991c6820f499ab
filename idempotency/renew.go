package idempotency

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// fleetLease is how long a claim in Redis lasts unless renewed: what a
// key stays blocked on every instance after the instance that held it
// died. Its holder renews it three times a lease while the request
// lives, so that a request under way for minutes (a slow upload, a long
// stream, an exchange carried past its client's timeout) keeps its key;
// two renewals in a row may fail (Redis slow, a pause of the process)
// before the lease runs out.
const fleetLease = 30 * time.Second

// renewBatch bounds the claims one renewal script renews: one round
// trip for many, each well within the fleet's timeout.
const renewBatch = 100

// renewScript renews the leases of claims: for each record in KEYS, the
// lease of ARGV[#KEYS+1] ms is set again while the claim whose in-flight
// value is the matching ARGV holds it, and set anew when the record is
// gone (its lease ran out while Redis was away, and nobody claimed the
// key since: the request still lives, and holds it again). A record
// another claim holds, or completed, is left alone. Returns, per record,
// 1 when the claim holds it, else 0: that claim renews no more.
var renewScript = redis.NewScript(`
local lease = ARGV[#KEYS + 1]
local held = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == ARGV[i] then
    redis.call('PEXPIRE', key, lease)
    held[i] = 1
  elseif not v then
    redis.call('SET', key, ARGV[i], 'PX', lease)
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
`)

// renewer renews the leases of a fleet store's claims while their
// requests live: one timer for all of them, armed while any is held, and
// one script per renewBatch claims.
type renewer struct {
	s     *fleetStore
	lease time.Duration

	mu    sync.Mutex
	held  map[*fleetClaim]struct{}
	timer *time.Timer
	armed bool
}

func (r *renewer) init(s *fleetStore, lease time.Duration) {
	r.s, r.lease, r.held = s, lease, make(map[*fleetClaim]struct{})
}

// every is how often the leases are renewed.
func (r *renewer) every() time.Duration { return r.lease / 3 }

// hold renews c's lease from now on, until letGo.
func (r *renewer) hold(c *fleetClaim) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[c] = struct{}{}
	if !r.armed {
		r.armed = true
		if r.timer == nil {
			r.timer = time.AfterFunc(r.every(), r.renew)
		} else {
			r.timer.Reset(r.every())
		}
	}
}

// letGo stops renewing c's lease, once a renewal of it under way has
// ended; c has ended (Keep or Release), so none starts after.
func (r *renewer) letGo(c *fleetClaim) {
	r.mu.Lock()
	delete(r.held, c)
	r.mu.Unlock()
	// taking the lock waits for the renewal under way, if any
	c.renewing.Lock()
	defer c.renewing.Unlock()
}

// renew renews every lease held, and comes again while any is.
func (r *renewer) renew() {
	r.mu.Lock()
	claims := make([]*fleetClaim, 0, len(r.held))
	for c := range r.held {
		claims = append(claims, c)
	}
	r.mu.Unlock()
	for len(claims) > 0 {
		n := min(len(claims), renewBatch)
		r.renewSome(claims[:n])
		claims = claims[n:]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.armed = len(r.held) > 0; r.armed {
		r.timer.Reset(r.every())
	}
}

// renewSome renews the leases of claims in one script. A claim that
// ended meanwhile is left out; one whose record another holds is no
// longer renewed; when Redis fails, the next round tries again.
func (r *renewer) renewSome(claims []*fleetClaim) {
	keys := make([]string, 0, len(claims))
	args := make([]any, 0, len(claims)+1)
	live := claims[:0]
	for _, c := range claims {
		c.renewing.Lock()
		if c.ended.Load() {
			c.renewing.Unlock()
			continue
		}
		live = append(live, c)
		keys = append(keys, c.name)
		args = append(args, c.mine)
	}
	defer func() {
		for _, c := range live {
			c.renewing.Unlock()
		}
	}()
	if len(live) == 0 {
		return
	}
	args = append(args, millis(r.lease))
	var held []int64
	ctx := context.Background()
	err := r.s.r.Do(ctx, opName, func(ctx context.Context, rc redis.Scripter) error {
		var err error
		held, err = renewScript.Run(ctx, rc, keys, args...).Int64Slice()
		return err
	})
	r.s.note(ctx, err)
	if err != nil || len(held) != len(live) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, c := range live {
		if held[i] == 0 {
			delete(r.held, c)
		}
	}
}
