package fleet

import (
	"testing"
	"time"
)

// A config reload releases the member and joins it again: the next
// config gets the same member, still connected, with its subscription;
// only once nobody joins within the linger time is it closed.
func TestReloadKeepsMember(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	prefix := uniquePrefix(t)
	r := newProcess(t)
	r.linger = 300 * time.Millisecond
	old := join(t, r, rs.URL(), prefix, nil)
	other := join(t, newProcess(t), rs.URL(), prefix, nil)

	old.Release() // the old config stops first
	next := join(t, r, rs.URL(), prefix, nil)
	if next != old {
		t.Fatal("a reload within the linger time got a new member")
	}
	var got recorder[BreakerState]
	defer next.OnBreaker(got.add)()
	time.Sleep(2 * r.linger) // past the linger of the first Release
	if !next.Connected() {
		t.Fatal("member disconnected by the reload")
	}
	other.PublishBreaker(BreakerState{Upstream: "u:1", State: StateOpen, Until: time.Now().Add(time.Minute)})
	got.find(t, time.Second, "state received after the reload", func(BreakerState) bool { return true })

	next.Release()
	waitFor(t, 2*time.Second, "member closed after its last release", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.members) == 0 && len(r.clients) == 0
	})
	if again := join(t, r, rs.URL(), prefix, nil); again == old {
		t.Error("a closed member was handed out again")
	}
}

// Members of one process share a Redis client per URL and timeout, and
// a member per URL, prefix and timeout.
func TestMembersShareClients(t *testing.T) {
	t.Parallel()
	r := newProcess(t)
	url := "redis://127.0.0.1:1/0"
	m1, _ := r.join(Options{URL: url, Prefix: "one"}, nil)
	m2, _ := r.join(Options{URL: url, Prefix: "two"}, nil)
	m3, _ := r.join(Options{URL: url, Prefix: "one", Timeout: DefaultTimeout}, nil)
	m4, _ := r.join(Options{URL: url, Prefix: "one", Timeout: time.Second}, nil)
	if m1 == m2 || m1.rdb != m2.rdb {
		t.Error("two prefixes on one URL: want two members on one client")
	}
	if m1 != m3 {
		t.Error("the same options, defaults spelled out: want the same member")
	}
	if m4 == m1 || m4.rdb == m1.rdb {
		t.Error("another timeout: want another member and client")
	}
	if m1.ID() != m4.ID() || m1.ID() == newProcess(t).id {
		t.Error("the instance id is per process")
	}
}
