package fleet

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// Do runs scripts against the fleet's Redis under the fleet's prefix;
// a missing key (redis.Nil) and an error Redis answered with leave the
// member connected; only the first is not counted.
func TestDoRunsScripts(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	m := join(t, newProcess(t), rs.URL(), uniquePrefix(t), nil)
	if got, want := m.Key("idem:ab12"), uniquePrefix(t)+":idem:ab12"; got != want {
		t.Errorf("Key = %q, want %q", got, want)
	}
	set := redis.NewScript(`return redis.call('SET', KEYS[1], ARGV[1])`)
	get := redis.NewScript(`return redis.call('GET', KEYS[1])`)
	ctx := context.Background()
	const op = "test-do-runs"
	counted := func() float64 { return testutil.ToFloat64(errorsTotal.WithLabelValues(op)) }

	if err := m.Do(ctx, op, func(ctx context.Context, c redis.Scripter) error {
		return set.Run(ctx, c, []string{m.Key("k")}, "v").Err()
	}); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := m.Do(ctx, op, func(ctx context.Context, c redis.Scripter) (err error) {
		got, err = get.Run(ctx, c, []string{m.Key("k")}).Text()
		return err
	}); err != nil || got != "v" {
		t.Fatalf("read back %q, %v; want v", got, err)
	}
	v, err := rawGet(t, rs.Addr(), m.Key("k"))
	if err != nil || v != "v" {
		t.Fatalf("the key in Redis is %q (%v): not under the prefix", v, err)
	}

	err = m.Do(ctx, op, func(ctx context.Context, c redis.Scripter) error {
		return get.Run(ctx, c, []string{m.Key("absent")}).Err()
	})
	if !errors.Is(err, redis.Nil) || counted() != 0 || !m.Connected() {
		t.Errorf("missing key: err %v, %v counted, connected %v; want redis.Nil, none, true", err, counted(), m.Connected())
	}

	err = m.Do(ctx, op, func(ctx context.Context, c redis.Scripter) error {
		return redis.NewScript(`return redis.error_reply('NOPE refused')`).Run(ctx, c, nil).Err()
	})
	if err == nil || counted() != 1 || !m.Connected() {
		t.Errorf("error reply: err %v, %v counted, connected %v; want an error, 1, true", err, counted(), m.Connected())
	}
}

// fn's context ends with the fleet's timeout; a failure past it is
// counted and the next Do fails at once, counted too, until the
// heartbeat finds Redis again. A caller that gave up is not counted.
func TestDoBoundedAndFailsFast(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	m := join(t, newProcess(t), rs.URL(), uniquePrefix(t), nil)
	const op = "test-do-fails"
	counted := func() float64 { return testutil.ToFloat64(errorsTotal.WithLabelValues(op)) }
	stuck := func(ctx context.Context, c redis.Scripter) error {
		<-ctx.Done() // a Redis that does not answer
		return ctx.Err()
	}

	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Do(gone, op, stuck); err == nil || counted() != 0 || !m.Connected() {
		t.Errorf("canceled caller: err %v, %v counted, connected %v; want an error, none, true", err, counted(), m.Connected())
	}

	start := time.Now()
	err := m.Do(context.Background(), op, stuck)
	if d := time.Since(start); err == nil || d < m.opts.Timeout || d > m.opts.Timeout+200*time.Millisecond {
		t.Errorf("stuck fn: err %v after %s, want an error after the timeout (%s)", err, d, m.opts.Timeout)
	}
	if counted() != 1 || m.Connected() {
		t.Errorf("after a timeout: %v counted, connected %v; want 1, false", counted(), m.Connected())
	}
	ran := false
	start = time.Now()
	err = m.Do(context.Background(), op, func(context.Context, redis.Scripter) error { ran = true; return nil })
	if !errors.Is(err, ErrNotConnected) || ran || time.Since(start) > 5*time.Millisecond {
		t.Errorf("while down: err %v, fn ran %v, after %s; want ErrNotConnected at once", err, ran, time.Since(start))
	}
	if counted() != 2 {
		t.Errorf("while down: %v counted, want 2: the operation skipped acted alone too", counted())
	}
	waitFor(t, 3*time.Second, "heartbeat reconnects", m.Connected)
	if err := m.Do(context.Background(), op, func(context.Context, redis.Scripter) error { return nil }); err != nil {
		t.Errorf("after reconnecting: %v", err)
	}
}

// rawGet reads key from the server at addr with a client of the
// test's own, not the member's.
func rawGet(t *testing.T, addr, key string) (string, error) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	return c.Get(context.Background(), key).Result()
}
