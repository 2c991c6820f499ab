package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Shared state (breaker states, overrides) is kept the same way: a key
// per item holding its latest value as JSON and expiring when the value
// stops meaning anything, a sorted set indexing those keys by expiry so
// that a member can read them all without SCANning the keyspace, and a
// channel on which each change is published. Writing the key and
// publishing happen in one script, so a member that subscribes first and
// reads the keys second misses nothing.

// writeScript stores or deletes an item and publishes it.
//
// KEYS[1]: the item's key; KEYS[2]: the index.
// ARGV[1]: channel; ARGV[2]: payload; ARGV[3]: TTL in ms (> 0: expires,
// 0: never, < 0: delete the key instead); ARGV[4]: "1" to do nothing,
// and publish nothing, when the key exists (to restore lost state
// without overwriting newer state).
var writeScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[3])
if ttl < 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
elseif ttl == 0 then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], '+inf', KEYS[1])
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
  redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
`)

// replayScript returns the items of an index that still exist, each as
// its payload followed by its TTL in ms (-1: none), and drops the index
// entries of the keys that expired. The keys are named by the index, not
// passed in KEYS: fleet mode needs a single Redis, not a cluster.
//
// KEYS[1]: the index.
var replayScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, k in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('GET', k)
  if v then
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', k)
  else
    redis.call('ZREM', KEYS[1], k)
  end
end
return out
`)

// epochScript returns the fleet's epoch, setting it to ARGV[1] when there
// is none. A member that sees another epoch than before knows that Redis
// lost its data (a restart without persistence) and restores what it
// knows.
//
// KEYS[1]: the epoch key.
var epochScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`)

// stored is an item read back from its key.
type stored struct {
	payload string
	pttl    int64 // ms; -1: no expiry
}

// write runs writeScript: ttl > 0 expires the key after ttl, 0 keeps it,
// < 0 deletes it.
func (m *Member) write(ctx context.Context, key, index, channel, payload string, ttl time.Duration, onlyIfAbsent bool) error {
	ms := int64(-1)
	switch {
	case ttl > 0:
		ms = max(1, (ttl + time.Millisecond - 1).Milliseconds())
	case ttl == 0:
		ms = 0
	}
	nx := "0"
	if onlyIfAbsent {
		nx = "1"
	}
	return writeScript.Run(ctx, m.rdb, []string{key, index}, channel, payload, ms, nx).Err()
}

// replay returns the items indexed by index.
func (m *Member) replay(ctx context.Context, index string) ([]stored, error) {
	vals, err := replayScript.Run(ctx, m.rdb, []string{index}).Slice()
	if err != nil {
		return nil, err
	}
	items := make([]stored, 0, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		p, ok1 := vals[i].(string)
		ttl, ok2 := vals[i+1].(int64)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("fleet: unexpected replay reply %T, %T", vals[i], vals[i+1])
		}
		items = append(items, stored{p, ttl})
	}
	return items, nil
}

// epochChanged reports whether Redis lost its data since this member
// last looked: its epoch differs from the one seen before.
func (m *Member) epochChanged(ctx context.Context) (bool, error) {
	v, err := epochScript.Run(ctx, m.rdb, []string{m.names.epoch}, newID()).Text()
	if err != nil {
		return false, err
	}
	prev := m.subs.epoch
	m.subs.epoch = v
	return prev != "" && prev != v, nil
}

// until turns a TTL into the local time it ends. TTLs rather than times
// travel between instances, so that their clocks need not agree.
func until(ttlMillis int64) time.Time {
	if ttlMillis <= 0 {
		return time.Time{}
	}
	return time.Now().Add(time.Duration(ttlMillis) * time.Millisecond)
}

// ttlMillis is the wire form of the time left until t (0: no end).
func ttlMillis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(1, (time.Until(t) + time.Millisecond - 1).Milliseconds())
}
