package answers

import "sync/atomic"

// Usage counts the values of every Store of one user (the idempotency
// records, the fallback's answers), process-wide, for that user's
// gauges: each store moves it as its values come and go, so that
// reading it takes no lock. The zero Usage is ready to use.
type Usage struct {
	values atomic.Int64
	bytes  atomic.Int64
}

// Values returns how many values the user's open stores hold.
func (u *Usage) Values() int64 { return u.values.Load() }

// Bytes returns the Cost of those values.
func (u *Usage) Bytes() int64 { return u.bytes.Load() }

func (u *Usage) add(values, bytes int64) {
	u.values.Add(values)
	u.bytes.Add(bytes)
}
