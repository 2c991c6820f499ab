package idempotency

// With a fleet, each record lives in the fleet's Redis too, under its
// prefix (P), beside this instance's own copy in a Memory:
//
//	P:idem:<key>   in flight: the claim's owner token, with a short lease that
//	               its owner renews while the request lives (renew.go)
//	               completed: the fingerprint and the answer, expiring after the TTL
//
// (<key> is Key.String; wire.go has the format.) Each step is one Lua
// script, so that claiming, renewing, completing and releasing are
// atomic in Redis, and only a claim's owner does them to its record. A
// value that does not decode (garbage, cut short, another format
// version during a rolling upgrade) is taken for a used key, never for
// a free one.

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// opName is the operation the records count under in
// caddy_resilient_fleet_errors_total.
const opName = "idempotency"

// pollEvery is how often a repeat waiting for a first on another
// instance looks at Redis: often enough to answer soon after the first,
// and at most a few dozen small reads a second per waiter.
const pollEvery = 25 * time.Millisecond

// Remote is the fleet's Redis as the records use it; *fleet.Member
// implements it.
type Remote interface {
	// Do runs fn against Redis under the fleet's timeout; while Redis is
	// known to be down it fails at once. Either way a failure (not
	// redis.Nil) is counted under op in
	// caddy_resilient_fleet_errors_total (the store acted alone for it)
	// and, unless Redis answered it (a redis.Error), marks Redis down
	// until the fleet's heartbeat sees it answer again.
	Do(ctx context.Context, op string, fn func(ctx context.Context, c redis.Scripter) error) error
	// Key names a Redis key under the fleet's prefix: prefix + ":" + name.
	Key(name string) string
}

// claimScript claims a free record for its caller, or says what holds it.
//
// KEYS[1]: the record. ARGV[1]: the caller's in-flight value; ARGV[2]:
// the lease (ms). Returns 1 when claimed, else the value held.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// keepScript completes the record of the claim whose in-flight value is
// ARGV[1]: while the claim holds it, and also once its lease ran out
// with nobody claiming since (its renewals failed while Redis was away:
// the answer is still worth sharing, and nobody can have sent again). A
// record another claim holds, or completed, is left alone.
//
// KEYS[1]: the record. ARGV[1]: the in-flight value; ARGV[2]: the
// completed record; ARGV[3]: the TTL (ms). Returns 1 when kept.
var keepScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`)

// releaseScript deletes the record while the claim whose in-flight
// value is ARGV[1] holds it. KEYS[1]: the record. Returns 1 when deleted.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`)

// fleetStore is a Store shared through the fleet's Redis, with a Memory
// of this instance's own records in front of it.
type fleetStore struct {
	local *Memory
	r     Remote
	log   *zap.Logger

	// shared is false while Redis failed last: it tells the log when
	// deduplication stops and starts being fleet-wide, once each time.
	shared atomic.Bool
	// badLog bounds the warnings about records that do not decode, which
	// a rolling upgrade could otherwise turn into one per request.
	badLog rate.Sometimes

	leases renewer
}

// NewFleet returns a store whose records live in Redis under the fleet's
// prefix, so that a repeat on any instance is caught, with local as this
// instance's own records: a repeat on the same instance is caught first
// there, without Redis, and still is while Redis is slow or down.
// Meanwhile a repeat on another instance is not (Begin goes on as if
// Redis had no record), and the change is logged once each way. A claim
// in Redis lasts a short lease that this instance renews while the
// request lives, so that a key comes free soon after an instance dies
// with it, and never while its request is under way. logger may be nil;
// so may local (then a Memory with the defaults is used) and r (then the
// store is local).
func NewFleet(local *Memory, r Remote, logger *zap.Logger) Store {
	if local == nil {
		local = NewMemory(Config{})
	}
	if r == nil {
		return local
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	s := &fleetStore{local: local, r: r, log: logger, badLog: rate.Sometimes{First: 1, Interval: time.Minute}}
	s.shared.Store(true)
	s.leases.init(s, fleetLease)
	return s
}

// Begin implements Store: it claims k locally first, then in Redis.
func (s *fleetStore) Begin(ctx context.Context, k Key, p Params, fp func() (Fingerprint, error)) (Result, error) {
	deadline := time.Now().Add(p.Wait)
	res, err := s.local.Begin(ctx, k, p, fp)
	if err != nil || res.Verdict != New {
		return res, err
	}
	lc, ok := res.Claim.(*memClaim)
	if !ok {
		return res, nil // the local store is closed: nothing is kept
	}

	var token [tokenLen]byte
	_, _ = rand.Read(token[:])
	ttl := p.TTL
	if ttl <= 0 {
		ttl = s.local.ttl
	}
	c := &fleetClaim{s: s, local: lc, name: s.r.Key("idem:" + k.String()), mine: flightValue(token), ttl: ttl}
	seenInFlight := false
	for {
		var held wireRecord
		claimed, err := s.claim(ctx, c, &held)
		var badRec *badRecordError
		switch {
		case err != nil && gaveUp(ctx):
			lc.Release()
			return Result{}, ctx.Err()
		case errors.As(err, &badRec):
			s.badLog.Do(func() {
				s.log.Warn("idempotency: a record in the fleet's redis does not decode; its key is taken for used (409) until the record expires",
					zap.String("key", k.String()), zap.String("error", err.Error()))
			})
			lc.Release()
			return Result{Verdict: Used}, nil
		case err != nil && seenInFlight:
			// The first on another instance was under way at the last
			// look: sending now could send twice.
			lc.Release()
			return Result{Verdict: InFlight}, nil
		case err != nil:
			c.name = ""
			return Result{Verdict: New, Claim: c}, nil
		case claimed:
			s.leases.hold(c)
			return Result{Verdict: New, Claim: c}, nil
		case held.done:
			lc.Release()
			return judge(held.fp, held.answer, fp)
		}
		left := time.Until(deadline)
		if left <= 0 {
			lc.Release()
			return Result{Verdict: InFlight}, nil
		}
		if !seenInFlight && p.Waiting != nil {
			p.Waiting()
		}
		seenInFlight = true
		t := time.NewTimer(min(left, pollEvery))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			lc.Release()
			return Result{}, ctx.Err()
		}
	}
}

// claim runs claimScript for c: claimed, or the record that holds the key.
func (s *fleetStore) claim(ctx context.Context, c *fleetClaim, held *wireRecord) (claimed bool, err error) {
	err = s.r.Do(ctx, opName, func(ctx context.Context, rc redis.Scripter) error {
		v, err := claimScript.Run(ctx, rc, []string{c.name}, c.mine, millis(s.leases.lease)).Result()
		if err != nil {
			return err
		}
		switch v := v.(type) {
		case int64:
			claimed = v == 1
			if !claimed {
				return bad("unexpected reply to a claim")
			}
			return nil
		case string:
			*held, err = decodeRecord([]byte(v))
			return err
		}
		return bad("unexpected reply to a claim")
	})
	s.note(ctx, err)
	return claimed, err
}

// note logs the change when Redis stops or starts answering the records.
// A caller that left says nothing of Redis; a record that does not
// decode says Redis answered.
func (s *fleetStore) note(ctx context.Context, err error) {
	var badRec *badRecordError
	switch {
	case err == nil || errors.As(err, &badRec):
		if !s.shared.Load() && s.shared.CompareAndSwap(false, true) {
			s.log.Info("idempotency: the fleet's redis answers again; repeats are caught on every instance")
		}
	case gaveUp(ctx):
	default:
		if s.shared.CompareAndSwap(true, false) {
			s.log.Warn("idempotency: the fleet's redis does not answer; repeats are caught on this instance only until it does",
				zap.String("error", err.Error()))
		}
	}
}

// gaveUp reports whether the caller's ctx ended, or is ending: an
// operation bounded by its deadline may fail a moment before ctx says
// so, and that says nothing of Redis.
func gaveUp(ctx context.Context) bool {
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		<-ctx.Done()
	}
	return ctx.Err() != nil
}

// millis returns d in whole milliseconds, at least 1, for PX.
func millis(d time.Duration) int64 {
	return max(1, int64((d+time.Millisecond-1)/time.Millisecond))
}

// fleetClaim is a Claim on a record both in the local Memory and, unless
// name is empty, in Redis.
type fleetClaim struct {
	s     *fleetStore
	local *memClaim
	name  string        // the record's Redis key; "" when the claim is local only
	mine  string        // the claim's in-flight value
	ttl   time.Duration // of the completed record
	ended atomic.Bool
	// renewing is held by a renewal of the claim's lease while it runs,
	// so that Keep and Release come after it in Redis: a renewal must
	// not set a lease again on a record its claim just released.
	renewing sync.Mutex
}

// Keep completes the local record first, for the repeats waiting here,
// then the record in Redis, bounded by the fleet's timeout. The client
// may be gone by now; the answer is shared all the same.
func (c *fleetClaim) Keep(fp Fingerprint, a Answer) {
	if c.ended.Swap(true) {
		return
	}
	c.local.Keep(fp, a)
	if c.name == "" {
		return
	}
	c.s.leases.letGo(c)
	v := encodeRecord(fp, a)
	ctx := context.Background()
	err := c.s.r.Do(ctx, opName, func(ctx context.Context, rc redis.Scripter) error {
		return keepScript.Run(ctx, rc, []string{c.name}, c.mine, v, millis(c.ttl)).Err()
	})
	c.s.note(ctx, err)
}

// Release deletes the record in Redis first, so that a repeat waiting
// here, which claims the key once the local record goes, finds it free
// in Redis too.
func (c *fleetClaim) Release() {
	if c.ended.Swap(true) {
		return
	}
	if c.name != "" {
		c.s.leases.letGo(c)
		ctx := context.Background()
		err := c.s.r.Do(ctx, opName, func(ctx context.Context, rc redis.Scripter) error {
			return releaseScript.Run(ctx, rc, []string{c.name}, c.mine).Err()
		})
		c.s.note(ctx, err)
	}
	c.local.Release()
}

var _ Store = (*fleetStore)(nil)
