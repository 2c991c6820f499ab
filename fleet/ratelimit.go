package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limit is a rate for the fleet as a whole: the upstream sees at most
// Rate requests a second, plus Burst at once after a quiet spell, however
// many instances send to it.
type Limit struct {
	// Rate is the sustained rate, in tokens per second.
	Rate float64
	// Burst is how many tokens the bucket holds, at least 1.
	Burst int
}

func (l Limit) check() error {
	if !(l.Rate > 0) || math.IsInf(l.Rate, 0) {
		return fmt.Errorf("fleet: rate must be a positive number, got %v", l.Rate)
	}
	if l.Burst < 1 {
		return fmt.Errorf("fleet: burst must be at least 1, got %d", l.Burst)
	}
	return nil
}

// interval is the emission interval, in µs: the time one token takes to
// come back.
func (l Limit) interval() float64 { return 1e6 / l.Rate }

// reserveScript is GCRA, as github.com/go-redis/redis_rate does it, on the
// Redis clock: the key holds the theoretical arrival time (TAT) of the
// next token, in µs since 2017 (so that it stays exact in a double), and
// a token is there once now >= TAT + interval - burst*interval. Two
// additions:
//   - "reserve" may grant a token that comes within ARGV[4] µs: the TAT
//     moves on as if it were taken now and the caller waits for it; a
//     token further off is refused and nothing is taken.
//   - "pause" empties the bucket until ARGV[4] µs from now: it moves the
//     TAT to that time plus a full bucket, so no token comes before then
//     and the bucket refills at the rate from empty. A TAT already later
//     (reservations made past the pause) is kept.
//   - "refund" gives a token back: the TAT moves back by one interval,
//     never before now (a full bucket stays full).
//
// The key expires when the TAT is reached: a missing key and a TAT in the
// past both mean a full bucket.
//
// KEYS[1]: the bucket. ARGV[1]: interval (µs); ARGV[2]: burst;
// ARGV[3]: "reserve" or "pause"; ARGV[4]: longest wait, or the pause (µs).
// Returns {granted (1 or 0), wait or retry-after (µs)}.
var reserveScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1483228800) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local arg = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = 0
if ARGV[3] == 'pause' then
  local empty = now + arg + tolerance
  if empty <= tat then return {1, 0} end
  tat = empty
elseif ARGV[3] == 'refund' then
  tat = tat - interval
  if tat <= now then
    redis.call('DEL', KEYS[1])
    return {1, 0}
  end
else
  wait = math.ceil(tat + interval - tolerance - now)
  if wait < 0 then wait = 0 end
  if wait > arg then return {0, wait} end
  tat = tat + interval
end
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000))
return {1, wait}
`)

// Reserve takes one token from the fleet's bucket key under l. When the
// token comes within maxWait it is taken and Reserve returns how long to
// wait before sending (0: now). Otherwise ok is false, nothing is taken,
// and retryAfter says when a token would be there. err is not nil when
// Redis did not answer within the timeout (at once while it is known to
// be down): the caller then falls back to a local limiter with a share of
// the rate, l.Rate / Live().
func (m *Member) Reserve(ctx context.Context, key string, l Limit, maxWait time.Duration) (wait, retryAfter time.Duration, ok bool, err error) {
	res, err := m.runBucket(ctx, opReserve, key, l, "reserve", max(maxWait, 0))
	if err != nil {
		return 0, 0, false, err
	}
	d := time.Duration(res[1]) * time.Microsecond
	if res[0] == 1 {
		return d, 0, true, nil
	}
	return 0, d, false, nil
}

// Pause empties the fleet's bucket key until the given time, because the
// upstream answered 429 or 503 with a Retry-After: no instance gets a
// token before then, and from then on the bucket refills at the rate
// instead of letting a full burst loose on an upstream that just asked
// for less. A time in the past does nothing.
func (m *Member) Pause(ctx context.Context, key string, l Limit, until time.Time) error {
	d := time.Until(until)
	if d <= 0 {
		return l.check()
	}
	_, err := m.runBucket(ctx, opPause, key, l, "pause", d)
	return err
}

// Refund gives back a token Reserve granted that will not be used: the
// client it was for left while it waited. The next reservation gets it,
// so the fleet's rate is not spent on requests never sent.
func (m *Member) Refund(ctx context.Context, key string, l Limit) error {
	_, err := m.runBucket(ctx, opReserve, key, l, "refund", 0)
	return err
}

// runBucket runs reserveScript, bounded by the timeout.
func (m *Member) runBucket(ctx context.Context, op, key string, l Limit, mode string, d time.Duration) ([]int64, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	if !m.health.connected.Load() {
		return nil, ErrNotConnected
	}
	rctx, cancel := context.WithTimeout(ctx, m.opts.Timeout)
	defer cancel()
	res, err := reserveScript.Run(rctx, m.rdb, []string{m.names.rate(key)}, l.interval(), l.Burst, mode, d.Microseconds()).Int64Slice()
	if err == nil && len(res) != 2 {
		err = errors.New("unexpected reply")
	}
	if err != nil {
		return nil, m.fail(ctx, op, err)
	}
	return res, nil
}
