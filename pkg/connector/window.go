package connector

import (
	"context"
	"sync"
	"time"
)

// window admits at most n calls in any one-second window. A token bucket whose burst equals
// its rate admits up to twice the rate in a second (a full bucket plus a second's refill);
// targets that document "N requests per second" count a sliding second, so the default
// policy uses this as well.
type window struct {
	mu    sync.Mutex
	times []time.Time // when each of the last n calls was admitted, oldest at next
	next  int
}

func newWindow(n int) *window { return &window{times: make([]time.Time, 0, n)} }

// Wait reserves the earliest moment at which a call keeps the window within n and sleeps
// until then. A reservation given up by a cancelled ctx stays used: that only makes calls
// fewer, never more.
func (w *window) Wait(ctx context.Context) error {
	w.mu.Lock()
	now := time.Now()
	at := now
	if len(w.times) < cap(w.times) {
		w.times = append(w.times, at)
	} else {
		if earliest := w.times[w.next].Add(time.Second); earliest.After(at) {
			at = earliest
		}
		w.times[w.next] = at
		w.next = (w.next + 1) % len(w.times)
	}
	w.mu.Unlock()
	if d := at.Sub(now); d > 0 {
		return sleep(ctx, d)
	}
	return nil
}
