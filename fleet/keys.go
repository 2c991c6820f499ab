package fleet

import (
	"crypto/sha256"
	"encoding/hex"
)

// names are the Redis keys and channels of one fleet, all under its
// prefix (P below):
//
//	P:members                 sorted set: instance id -> last heartbeat (ms, Redis clock)
//	P:epoch                   random value, set once: a new one means Redis lost its data
//	P:breaker:<up>:<hash>     latest open state of a breaker (JSON), expiring when it half-opens
//	P:breakers                sorted set indexing those keys by expiry
//	P:override:<up>           operator override of an upstream (JSON), expiring at its end
//	P:overrides               sorted set indexing those keys by expiry (+inf: until reset)
//	P:rate:<key>              GCRA bucket: theoretical arrival time (µs since 2017)
//	P:idem:<key>              idempotency record (package idempotency, through Do and Key):
//	                          in flight (owner token, expiring with the lease) or
//	                          completed (the answer, expiring after the ttl)
//	P:events:breaker          channel: breaker states as they change
//	P:events:override         channel: overrides as they are given
//
// <hash> is a short hash of the breaker settings, which are opaque and
// may be long.
type names struct {
	prefix          string
	members         string
	epoch           string
	breakerIndex    string
	overrideIndex   string
	breakerChannel  string
	overrideChannel string
}

func newNames(prefix string) names {
	return names{
		prefix:          prefix,
		members:         prefix + ":members",
		epoch:           prefix + ":epoch",
		breakerIndex:    prefix + ":breakers",
		overrideIndex:   prefix + ":overrides",
		breakerChannel:  prefix + ":events:breaker",
		overrideChannel: prefix + ":events:override",
	}
}

// breaker is the key of the breaker of upstream under settings.
func (n names) breaker(upstream, settings string) string {
	sum := sha256.Sum256([]byte(settings))
	return n.prefix + ":breaker:" + upstream + ":" + hex.EncodeToString(sum[:8])
}

// override is the key of the operator override of upstream.
func (n names) override(upstream string) string {
	return n.prefix + ":override:" + upstream
}

// rate is the key of the rate-limit bucket named key.
func (n names) rate(key string) string {
	return n.prefix + ":rate:" + key
}
