package answers

import (
	"bytes"
	"flag"
	"math/rand/v2"
	"testing"
	"time"
)

// Long runs: go test ./idempotency/answers -run TestStoreModel -model.ops 2000000
var (
	modelOps  = flag.Int("model.ops", 20000, "operations of TestStoreModel")
	modelSeed = flag.Uint64("model.seed", 1, "seed of TestStoreModel")
)

// modelValue is a value as the reference model keeps it.
type modelValue struct {
	b       []byte
	kept    time.Time
	expires time.Time
	seq     int // order of the puts: the oldest goes first
}

// storeModel is what a Store must do, as plainly as it can be said: a
// map, the bound, and the oldest dropped first when the bound would be
// passed.
type storeModel struct {
	base   int64
	limits map[int64]int
	vals   map[Key]*modelValue
	seq    int
}

func (m *storeModel) bound() int64 {
	if len(m.limits) == 0 {
		return m.base
	}
	b := int64(0)
	for l := range m.limits {
		b = max(b, l)
	}
	return b
}

func (m *storeModel) bytes() int64 {
	n := int64(0)
	for _, v := range m.vals {
		n += Cost(len(v.b))
	}
	return n
}

func (m *storeModel) dropOldest() {
	var oldest Key
	first := -1
	for k, v := range m.vals {
		if first < 0 || v.seq < first {
			oldest, first = k, v.seq
		}
	}
	delete(m.vals, oldest)
}

func (m *storeModel) put(k Key, b []byte, now, expires time.Time) bool {
	delete(m.vals, k)
	if !now.Before(expires) || len(b) > ringSize(m.bound()) {
		return false
	}
	for len(m.vals) > 0 && m.bytes()+Cost(len(b)) > m.bound() {
		m.dropOldest()
	}
	m.seq++
	m.vals[k] = &modelValue{b: b, kept: now, expires: expires, seq: m.seq}
	return true
}

func (m *storeModel) get(k Key, now time.Time) *modelValue {
	v := m.vals[k]
	if v != nil && !now.Before(v.expires) {
		delete(m.vals, k)
		return nil
	}
	return v
}

func (m *storeModel) sweep(now time.Time) {
	for k, v := range m.vals {
		if !now.Before(v.expires) {
			delete(m.vals, k)
		}
	}
}

// rebound follows a change of the limits held: when the bound moved, the
// oldest go until the values are within it (a value kept alone over the
// bound stays while the bound does not move).
func (m *storeModel) rebound(before int64) {
	if m.bound() == before {
		return
	}
	for len(m.vals) > 0 && m.bytes() > m.bound() {
		m.dropOldest()
	}
}

// TestStoreModel drives a Store with random puts (sizes from 0 to past
// the ring, many near chunk boundaries), replacements, gets, deletes,
// expiries, sweeps and bound changes, under bounds that are no multiple
// of a chunk, and compares every value, every time and every count with
// the reference model.
func TestStoreModel(t *testing.T) {
	rnd := rand.New(rand.NewPCG(*modelSeed, 7))
	c := newClock()
	const base = 3*chunk + 12345
	s := newStore(t, Config{MaxBytes: base, Clock: c.now, SweepEvery: -1})
	m := &storeModel{base: base, limits: map[int64]int{}, vals: map[Key]*modelValue{}}
	var releases []func()
	var held []int64
	size := func() int {
		b := m.bound()
		switch rnd.IntN(6) {
		case 0:
			return rnd.IntN(200)
		case 1:
			return max(0, chunk*(1+rnd.IntN(3))+rnd.IntN(9)-4)
		case 2:
			return max(0, ringSize(b)+rnd.IntN(9)-6)
		case 3:
			return max(0, int(b)-Overhead+rnd.IntN(9)-4)
		default:
			return rnd.IntN(int(b) / 3)
		}
	}
	for op := range *modelOps {
		k := key(rnd.IntN(40))
		switch r := rnd.IntN(100); {
		case r < 45:
			b := pattern(op, size())
			ttl := time.Duration(1+rnd.IntN(120)) * time.Second
			expires := c.now().Add(ttl)
			h := rnd.IntN(len(b) + 1)
			got, want := s.Put(k, b[:h], b[h:], expires), m.put(k, b, c.now(), expires)
			if got != want {
				t.Fatalf("op %d: Put of %d bytes = %v, want %v", op, len(b), got, want)
			}
		case r < 80:
			got, kept, ok := s.Get(k)
			want := m.get(k, c.now())
			switch {
			case ok != (want != nil):
				t.Fatalf("op %d: Get found %v, want %v", op, ok, want != nil)
			case ok && (!bytes.Equal(got, want.b) || !kept.Equal(want.kept)):
				t.Fatalf("op %d: Get gave %d bytes kept at %v, want %d kept at %v", op, len(got), kept, len(want.b), want.kept)
			}
		case r < 85:
			s.Delete(k)
			delete(m.vals, k)
		case r < 93:
			c.advance(time.Duration(rnd.IntN(20)) * time.Second)
		case r < 95:
			s.Sweep()
			m.sweep(c.now())
		case r < 98 || len(held) == 0:
			l, before := int64(chunk/2+rnd.IntN(5*chunk)), m.bound()
			releases = append(releases, s.Limit(l))
			held = append(held, l)
			m.limits[l]++
			m.rebound(before)
		default:
			i, before := rnd.IntN(len(held)), m.bound()
			releases[i]()
			if m.limits[held[i]]--; m.limits[held[i]] == 0 {
				delete(m.limits, held[i])
			}
			releases = append(releases[:i], releases[i+1:]...)
			held = append(held[:i], held[i+1:]...)
			m.rebound(before)
		}
		if n, b := s.Len(); n != len(m.vals) || b != m.bytes() {
			t.Fatalf("op %d: Len() = %d, %d; the model holds %d, %d", op, n, b, len(m.vals), m.bytes())
		}
	}
	for k, want := range m.vals {
		if got, _, ok := s.Get(k); !ok || !bytes.Equal(got, want.b) {
			t.Fatalf("at the end: key %x gave %d bytes, %v; want %d", k[:4], len(got), ok, len(want.b))
		}
	}
}
