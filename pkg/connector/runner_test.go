package connector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Policy
		want []string
	}{
		{"zero is fine", Policy{}, nil},
		{"negative rate", Policy{Rate: -1}, []string{"policy.rate"}},
		{"burst without rate", Policy{Burst: 3}, []string{"policy.burst: needs a rate"}},
		{"too many attempts", Policy{MaxAttempts: 5000}, []string{"policy.max_attempts"}},
		{"negative concurrency", Policy{Concurrency: -2}, []string{"policy.concurrency"}},
		{"backoff max below initial", Policy{BackoffInitial: time.Minute, BackoffMax: time.Second}, []string{"policy.backoff_max: 1s is shorter than backoff_initial 1m0s"}},
		{"all at once", Policy{Rate: -1, Timeout: -time.Second}, []string{"policy.rate", "policy.timeout"}},
		{"a duration without unit", Policy{Timeout: 30}, []string{"policy.timeout: 30ns is below 1ms; write the unit"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted a bad policy")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseConfigsPolicy(t *testing.T) {
	cfgs, err := ParseConfigs([]byte("connectors:\n  - name: a\n    type: memory\n    policy:\n      rate: 5\n      concurrency: 2\n      backoff_initial: 250ms\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfgs[0].Policy; p.Rate != 5 || p.Concurrency != 2 || p.BackoffInitial != 250*time.Millisecond {
		t.Fatalf("policy %+v", p)
	}
	_, err = ParseConfigs([]byte("connectors:\n  - name: a\n    type: memory\n    policy:\n      rate: 5\n      rat: 7\n"))
	if err == nil || !strings.Contains(err.Error(), `line 6: unknown field "rat"`) {
		t.Fatalf("unknown policy field: %v", err)
	}
	_, err = ParseConfigs([]byte("connectors:\n  - name: a\n    type: memory\n    policy: {max_attempts: -1}\n"))
	if err == nil || !strings.Contains(err.Error(), `line 2: connector "a": policy.max_attempts`) {
		t.Fatalf("bad policy value: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	p := Policy{BackoffInitial: 100 * time.Millisecond, BackoffMax: time.Second}.WithDefaults()
	retryable := errors.New("boom")
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 30: time.Second} {
		if got := p.Backoff(n, retryable, 0); got != want {
			t.Errorf("attempt %d without jitter: %s, want %s", n, got, want)
		}
		if got := p.Backoff(n, retryable, 0.999); got < want/2 || got > want {
			t.Errorf("attempt %d with jitter: %s, want within [%s, %s]", n, got, want/2, want)
		}
	}
	// A target's Retry-After wins over a shorter back-off, and is capped.
	if got := p.Backoff(1, RetryableAfter(retryable, 3*time.Second), 0.5); got != 3*time.Second {
		t.Errorf("Retry-After 3s: %s", got)
	}
	if got := p.Backoff(1, RetryableAfter(retryable, 48*time.Hour), 0.5); got != DefaultMaxRetryAfter {
		t.Errorf("Retry-After 48h: %s, want the cap %s", got, DefaultMaxRetryAfter)
	}
}

func newTestRunner(t *testing.T, p Policy) *Runner {
	t.Helper()
	r, err := NewRunner("t", p)
	if err != nil {
		t.Fatal(err)
	}
	r.jitter = func() float64 { return 0 }
	return r
}

func TestDoRetriesRetryableThenSucceeds(t *testing.T) {
	r := newTestRunner(t, Policy{BackoffInitial: 10 * time.Millisecond, MaxAttempts: 5})
	var failed []int
	err := r.Do(context.Background(), "op", func(ctx context.Context, n int) error {
		if n < 3 {
			return Retryable(errors.New("unavailable"))
		}
		return nil
	}, Hooks{Failed: func(n int, err error, d time.Duration) { failed = append(failed, n) }})
	if err != nil || len(failed) != 2 {
		t.Fatalf("Do = %v after failures %v", err, failed)
	}
}

func TestDoDoesNotRetryPermanentNotFoundOrPending(t *testing.T) {
	r := newTestRunner(t, Policy{BackoffInitial: time.Millisecond})
	for _, e := range []error{Permanent(errors.New("403")), NotFound(errors.New("gone")), ErrUnsupported, ErrPending} {
		calls := 0
		err := r.Do(context.Background(), "op", func(context.Context, int) error { calls++; return e }, Hooks{})
		if calls != 1 || !errors.Is(err, e) {
			t.Errorf("%v: %d calls, Do = %v", e, calls, err)
		}
	}
}

func TestDoGivesUpAfterMaxAttempts(t *testing.T) {
	r := newTestRunner(t, Policy{BackoffInitial: time.Millisecond, MaxAttempts: 3})
	calls := 0
	err := r.Do(context.Background(), "op", func(context.Context, int) error { calls++; return errors.New("timeout") }, Hooks{})
	if calls != 3 || !errors.Is(err, ErrAttemptsExhausted) || KindOf(err) != KindPermanent || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("%d calls, Do = %v (kind %v)", calls, err, KindOf(err))
	}
}

// A Retry-After from the target delays the retry and holds every other call to the target.
func TestRetryAfterPausesTheTarget(t *testing.T) {
	r := newTestRunner(t, Policy{BackoffInitial: time.Millisecond})
	start := time.Now()
	var second time.Time
	err := r.Do(context.Background(), "op", func(ctx context.Context, n int) error {
		return r.Call(ctx, "disable", func(context.Context) error {
			if n == 1 {
				return RetryableAfter(errors.New("429"), 300*time.Millisecond)
			}
			second = time.Now()
			return nil
		})
	}, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if d := second.Sub(start); d < 300*time.Millisecond {
		t.Fatalf("retried after %s, Retry-After was 300ms", d)
	}
	r.pause(200 * time.Millisecond)
	t0 := time.Now()
	if err := r.Call(context.Background(), "get", func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d < 150*time.Millisecond {
		t.Fatalf("a call during the pause went after %s", d)
	}
}

func TestRateLimit(t *testing.T) {
	r := newTestRunner(t, Policy{Rate: 20, Burst: 1})
	start := time.Now()
	for range 11 {
		if err := r.Call(context.Background(), "get", func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// 11 calls at 20/s with a burst of 1: the last goes 10 intervals of 50ms after the first.
	if d := time.Since(start); d < 450*time.Millisecond || d > 2*time.Second {
		t.Fatalf("11 calls took %s, want about 500ms", d)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	r := newTestRunner(t, Policy{Concurrency: 2})
	var cur, peak atomic.Int32
	done := make(chan error)
	for range 6 {
		go func() {
			done <- r.Do(context.Background(), "op", func(context.Context, int) error {
				n := cur.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(30 * time.Millisecond)
				cur.Add(-1)
				return nil
			}, Hooks{})
		}()
	}
	for range 6 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak concurrency %d, want 2", p)
	}
}

func TestDoStopsWithContextAndHeartbeats(t *testing.T) {
	r := newTestRunner(t, Policy{BackoffInitial: time.Hour, BackoffMax: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Millisecond)
	defer cancel()
	var beats atomic.Int32
	err := r.Do(ctx, "op", func(context.Context, int) error { return errors.New("down") },
		Hooks{Heartbeat: func() { beats.Add(1) }, HeartbeatEvery: 20 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || beats.Load() < 2 {
		t.Fatalf("Do = %v with %d heartbeats", err, beats.Load())
	}
}

func TestCallTimeout(t *testing.T) {
	r := newTestRunner(t, Policy{Timeout: 50 * time.Millisecond})
	err := r.Call(context.Background(), "get", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Call = %v", err)
	}
}

// With the default burst, no one-second window holds more calls than the rate, however many
// callers race (a token bucket with burst = rate lets the first second reach twice the rate).
func TestDefaultBurstKeepsEverySecondWithinTheRate(t *testing.T) {
	for _, tc := range []struct {
		rate    float64
		callers int
		calls   int
	}{{5, 1, 16}, {5, 4, 16}, {3.5, 3, 10}} {
		t.Run(fmt.Sprintf("rate %v callers %d", tc.rate, tc.callers), func(t *testing.T) {
			r := newTestRunner(t, Policy{Rate: tc.rate, Concurrency: tc.callers})
			var mu sync.Mutex
			var at []time.Time
			var wg sync.WaitGroup
			for c := range tc.callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := c; i < tc.calls; i += tc.callers {
						r.Call(context.Background(), "get", func(context.Context) error {
							mu.Lock()
							at = append(at, time.Now())
							mu.Unlock()
							return nil
						})
					}
				}()
			}
			wg.Wait()
			slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
			// Scheduling may start a call a little after its admission: allow 30ms of slack.
			span := time.Second - 30*time.Millisecond
			for i := range at {
				n := 0
				for j := i; j < len(at) && at[j].Sub(at[i]) < span; j++ {
					n++
				}
				if float64(n) > tc.rate {
					t.Fatalf("%d calls within %s of call %d, rate %v", n, span, i, tc.rate)
				}
			}
		})
	}
}

// Attempts an earlier run made count against the budget: numbering goes on from them, and a
// budget already spent fails as exhausted without calling the target.
func TestDoContinuesTheAttemptBudget(t *testing.T) {
	r := newTestRunner(t, Policy{MaxAttempts: 5, BackoffInitial: time.Millisecond, BackoffMax: time.Millisecond})
	fail := &Error{Kind: KindRetryable, Err: errors.New("down")}
	var seen []int
	err := r.Do(context.Background(), "op", func(_ context.Context, n int) error { seen = append(seen, n); return fail }, Hooks{Used: 3})
	if !errors.Is(err, ErrAttemptsExhausted) || !slices.Equal(seen, []int{4, 5}) {
		t.Fatalf("with 3 of 5 used: attempts %v, err %v; want [4 5] and exhausted", seen, err)
	}
	seen = nil
	err = r.Do(context.Background(), "op", func(_ context.Context, n int) error { seen = append(seen, n); return nil }, Hooks{Used: 5})
	if !errors.Is(err, ErrAttemptsExhausted) || KindOf(err) != KindPermanent || len(seen) != 0 {
		t.Fatalf("with 5 of 5 used: attempts %v, err %v; want none and a permanent exhausted error", seen, err)
	}
}
