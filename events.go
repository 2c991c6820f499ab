package resilient

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// Breaker state changes are emitted as Caddy events, so that users can
// hook them (`events` app subscriptions): breaker_open,
// breaker_half_open and breaker_closed, with the data
// {"upstream": "host:port", "from": "<state>"}.
//
// Breakers outlive configs, so the events go through the events app of
// the config loaded last. A change of state happens under the breaker's
// lock, and a handler could call back into it (through the admin API,
// say), so events are handed to one goroutine that emits them in order.

// eventSink is where breaker events go: the events app of the config
// loaded last, and the context to emit them in.
type eventSink struct {
	app *caddyevents.App
	ctx caddy.Context
}

var (
	events     atomic.Pointer[eventSink]
	eventQueue = make(chan breakerEvent, 256)
	eventsOnce sync.Once
)

type breakerEvent struct{ upstream, from, to string }

// useEvents makes the transport's config the one breaker events go to;
// a config without the events app gets none.
func useEvents(ctx caddy.Context) error {
	app, err := ctx.AppIfConfigured("events")
	if errors.Is(err, caddy.ErrNotConfigured) {
		events.Store(nil)
		return nil
	}
	if err != nil {
		return err
	}
	events.Store(&eventSink{app: app.(*caddyevents.App), ctx: ctx})
	eventsOnce.Do(func() { go emitEvents() })
	return nil
}

// emitBreakerChange queues the event for a breaker's change of state;
// if the queue is full the event is dropped rather than block a request.
func emitBreakerChange(upstream, from, to string) {
	select {
	case eventQueue <- breakerEvent{upstream, from, to}:
	default:
	}
}

func emitEvents() {
	for ev := range eventQueue {
		sink := events.Load()
		if sink == nil {
			continue
		}
		sink.app.Emit(sink.ctx, "breaker_"+ev.to, map[string]any{
			"upstream": ev.upstream,
			"from":     ev.from,
		})
	}
}
