package connector_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
)

// A command handled through Runner.Do with a heartbeat must not be redelivered by JetStream
// however long the runner makes it wait: each case below waits about 2.5 AckWaits in one
// place, and the message must be delivered exactly once.
func TestDoHeartbeatKeepsMessageAliveThroughEveryWait(t *testing.T) {
	const ackWait = time.Second
	const wait = 5 * ackWait / 2
	ok := func(context.Context) error { return nil }
	for _, tc := range []struct {
		name   string
		policy connector.Policy
		// setup runs before the command is published, e.g. to make the target busy.
		setup   func(t *testing.T, r *connector.Runner)
		attempt func(r *connector.Runner) func(ctx context.Context, n int) error
	}{{
		name: "retry-after pause",
		setup: func(t *testing.T, r *connector.Runner) {
			// Another operation's call hit a 429: every call to the target waits it out.
			err := r.Call(context.Background(), "get", func(context.Context) error {
				return connector.RetryableAfter(errors.New("429"), wait)
			})
			if connector.RetryAfterOf(err) != wait {
				t.Fatalf("Call = %v", err)
			}
		},
		attempt: func(r *connector.Runner) func(ctx context.Context, n int) error {
			return func(ctx context.Context, _ int) error { return r.Call(ctx, "disable", ok) }
		},
	}, {
		name:   "rate-limit token",
		policy: connector.Policy{Rate: float64(time.Second) / float64(wait), Burst: 1},
		setup: func(t *testing.T, r *connector.Runner) {
			// The only token goes to another call; the next one comes after wait.
			if err := r.Call(context.Background(), "get", ok); err != nil {
				t.Fatal(err)
			}
		},
		attempt: func(r *connector.Runner) func(ctx context.Context, n int) error {
			return func(ctx context.Context, _ int) error { return r.Call(ctx, "disable", ok) }
		},
	}, {
		name:   "concurrency slot",
		policy: connector.Policy{Concurrency: 1},
		setup: func(t *testing.T, r *connector.Runner) {
			// Another operation holds the only slot for wait.
			started := make(chan struct{})
			go r.Do(context.Background(), "other", func(context.Context, int) error {
				close(started)
				time.Sleep(wait)
				return nil
			}, connector.Hooks{})
			<-started
		},
		attempt: func(r *connector.Runner) func(ctx context.Context, n int) error {
			return func(ctx context.Context, _ int) error { return r.Call(ctx, "disable", ok) }
		},
	}, {
		name: "back-off between attempts",
		// Jitter takes up to half off: the delay is at least wait.
		policy: connector.Policy{BackoffInitial: 2 * wait},
		attempt: func(r *connector.Runner) func(ctx context.Context, n int) error {
			return func(ctx context.Context, n int) error {
				if n == 1 {
					return errors.New("503")
				}
				return r.Call(ctx, "disable", ok)
			}
		},
	}, {
		name:   "slow call",
		policy: connector.Policy{Timeout: 2 * wait},
		attempt: func(r *connector.Runner) func(ctx context.Context, n int) error {
			return func(ctx context.Context, _ int) error {
				return r.Call(ctx, "disable", func(context.Context) error { time.Sleep(wait); return nil })
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := natstest.Start(t)
			r, err := connector.NewRunner("t", tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			var deliveries atomic.Int32
			handled := make(chan error, 1)
			c, err := natsx.NewConsumer(context.Background(), s.JS, natsx.ConsumerSpec{
				Durable: "wait", FilterSubjects: []string{"tenure.provision.>"},
				AckWait: ackWait, MaxDeliver: 10,
				// A redelivery is handled while the first delivery still waits, as it would be
				// by another replica.
				Concurrency: 4,
			}, func(ctx context.Context, msg jetstream.Msg) error {
				if deliveries.Add(1) > 1 {
					return nil
				}
				err := r.Do(ctx, msg.Subject(), tc.attempt(r), connector.Hooks{
					Heartbeat:      func() { msg.InProgress() },
					HeartbeatEvery: ackWait / 3,
				})
				handled <- err
				return err
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { c.Run(ctx); close(done) }()
			t.Cleanup(func() { cancel(); <-done })

			if tc.setup != nil {
				tc.setup(t, r)
			}
			start := time.Now()
			if _, err := s.JS.Publish(context.Background(), "tenure.provision.t.disable.w1", []byte("cmd")); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-handled:
				if err != nil {
					t.Fatalf("Do = %v", err)
				}
			case <-time.After(10 * wait):
				t.Fatal("command not handled")
			}
			if d := time.Since(start); d < 2*ackWait {
				t.Fatalf("handled after %v: the runner did not wait longer than AckWait, the test proves nothing", d)
			}
			time.Sleep(ackWait / 2) // let a late redelivery arrive
			if n := deliveries.Load(); n != 1 {
				t.Fatalf("command delivered %d times, want 1: it was redelivered while the runner waited", n)
			}
		})
	}
}
