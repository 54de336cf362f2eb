package connector

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// ErrAttemptsExhausted matches the error Runner.Do returns when every attempt failed with a
// retryable error.
var ErrAttemptsExhausted = errors.New("attempts exhausted")

// ErrPending says an operation was handed to someone else (a human, for the manual connector)
// and will be confirmed later, not by retrying. A host records the operation as waiting and
// does not retry it; Runner.Do returns it at once.
var ErrPending = errors.New("waiting for an operator")

// Runner is the host's execution policy for one target: it owns retries with exponential
// back-off and jitter, error classes, Retry-After, the rate limit and the concurrency limit,
// and it traces and measures every call. Connectors only talk to their target; a host wraps
// each connector call in Call and each operation (a sequence of calls that converges one
// account) in Do.
type Runner struct {
	target  string
	policy  Policy
	limiter *rate.Limiter // nil: no rate limit
	window  *window       // with the default burst: at most Rate calls in any one second
	slots   chan struct{}
	jitter  func() float64

	mu          sync.Mutex
	pausedUntil time.Time // a Retry-After from the target holds every call until then

	tracer   trace.Tracer
	callDur  metric.Float64Histogram
	opDur    metric.Float64Histogram
	failures metric.Int64Counter
	retries  metric.Int64Counter
	attrs    attribute.Set
}

// NewRunner returns the runner for target under p (defaults applied).
func NewRunner(target string, p Policy) (*Runner, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("target %q: %w", target, err)
	}
	defaultBurst := p.Burst == 0
	p = p.WithDefaults()
	r := &Runner{
		target: target,
		policy: p,
		slots:  make(chan struct{}, p.Concurrency),
		jitter: rand.Float64,
		tracer: otel.Tracer("tenure/connector"),
		attrs:  attribute.NewSet(attribute.String("tenure.target", target)),
	}
	if p.Rate > 0 {
		r.limiter = rate.NewLimiter(rate.Limit(p.Rate), p.Burst)
		if defaultBurst {
			r.window = newWindow(max(1, int(math.Floor(p.Rate))))
		}
	}
	m := otel.Meter("tenure/connector")
	var errs []error
	var err error
	r.callDur, err = m.Float64Histogram("tenure.connector.call.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of one call to a target, including the wait for a rate-limit token."))
	errs = append(errs, err)
	r.opDur, err = m.Float64Histogram("tenure.connector.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of one provisioning operation from first attempt to outcome, retries included."))
	errs = append(errs, err)
	r.failures, err = m.Int64Counter("tenure.connector.call.failures", metric.WithDescription("Failed calls to a target, by error class."))
	errs = append(errs, err)
	r.retries, err = m.Int64Counter("tenure.connector.operation.retries", metric.WithDescription("Attempts retried after a retryable error."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("target %q: metrics: %w", target, err)
	}
	return r, nil
}

// Policy returns the runner's policy with defaults applied.
func (r *Runner) Policy() Policy { return r.policy }

// Call makes one call to the target: it waits until a pause the target asked for is over
// and for a rate-limit token, bounds the call with the policy's timeout, and records a span
// and metrics. A Retry-After hint in the error pauses every call to the target. The error is
// the connector's, unchanged.
func (r *Runner) Call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	ctx, span := r.tracer.Start(ctx, "connector "+op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("tenure.target", r.target), attribute.String("tenure.connector.op", op)))
	defer span.End()
	start := time.Now()
	if err := r.waitTurn(ctx); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, r.policy.Timeout)
	err := fn(cctx)
	cancel()
	outcome := "ok"
	if err != nil {
		outcome = kindLabel(err)
		if ra := min(RetryAfterOf(err), r.policy.MaxRetryAfter); ra > 0 && KindOf(err) == KindRetryable {
			r.pause(ra)
			span.SetAttributes(attribute.String("tenure.retry_after", ra.String()))
		}
		if KindOf(err) != KindNotFound && !errors.Is(err, ErrPending) {
			// Absence and a hand-off to a person are answers, not failures of the call.
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		r.failures.Add(ctx, 1, metric.WithAttributeSet(r.attrs), metric.WithAttributes(attribute.String("op", op), attribute.String("kind", outcome)))
	}
	r.callDur.Record(ctx, time.Since(start).Seconds(), metric.WithAttributeSet(r.attrs),
		metric.WithAttributes(attribute.String("op", op), attribute.String("outcome", outcome)))
	return err
}

func kindLabel(err error) string {
	if errors.Is(err, ErrPending) {
		return "pending"
	}
	switch KindOf(err) {
	case KindPermanent:
		return "permanent"
	case KindNotFound:
		return "not_found"
	}
	return "retryable"
}

func (r *Runner) pause(d time.Duration) {
	until := time.Now().Add(d)
	r.mu.Lock()
	if until.After(r.pausedUntil) {
		r.pausedUntil = until
	}
	r.mu.Unlock()
}

// PausedUntil says until when the target asked not to be called (zero if it did not).
func (r *Runner) PausedUntil() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pausedUntil
}

func (r *Runner) waitTurn(ctx context.Context) error {
	for {
		wait := time.Until(r.PausedUntil())
		if wait <= 0 {
			break
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
	if r.limiter != nil {
		if err := r.limiter.Wait(ctx); err != nil {
			return err
		}
	}
	if r.window != nil {
		return r.window.Wait(ctx)
	}
	return nil
}

// Hooks let a host follow an operation Do runs.
type Hooks struct {
	// Failed is called after each failed attempt with the attempt number, the error and, if
	// the operation will be retried, the delay before the next attempt (0 when it will not).
	Failed func(attempt int, err error, retryIn time.Duration)
	// Heartbeat is called every HeartbeatEvery from the moment Do starts until it returns,
	// e.g. to tell a message broker the work is still in progress. It covers every wait in
	// the runner (a concurrency slot, the back-off between attempts, and, in each Call the
	// attempt makes, a Retry-After pause and a rate-limit token) as well as the calls
	// themselves, so none of them can outlast a broker's ack deadline. It runs on its own
	// goroutine, concurrently with the attempt and Failed, and never after Do returns.
	Heartbeat      func()
	HeartbeatEvery time.Duration
	// Used is how many attempts earlier runs of the same operation already made (a host
	// that persists them, so a crash and restart do not renew the budget): numbering goes
	// on from there, and an operation with none left fails as exhausted without a call.
	Used int
}

// Do runs an operation: attempt is called with the attempt number (1-based) while holding a
// concurrency slot, and retried with back-off while it fails with a retryable error, up to
// the policy's MaxAttempts. The slot is released during the back-off, so a failing operation
// does not block the others. Do returns nil, a permanent or not-found error as is, ErrPending
// as is, a context error, or an error matching ErrAttemptsExhausted that wraps the last one.
func (r *Runner) Do(ctx context.Context, name string, attempt func(ctx context.Context, n int) error, h Hooks) error {
	ctx, span := r.tracer.Start(ctx, "provision "+name, trace.WithAttributes(attribute.String("tenure.target", r.target)))
	defer span.End()
	start := time.Now()
	outcome := "ok"
	defer func() {
		r.opDur.Record(ctx, time.Since(start).Seconds(), metric.WithAttributeSet(r.attrs), metric.WithAttributes(attribute.String("outcome", outcome)))
	}()
	defer heartbeat(h)()
	if h.Used >= r.policy.MaxAttempts {
		outcome = "exhausted"
		err := &Error{Kind: KindPermanent, Err: fmt.Errorf("%w: %d attempts made before", ErrAttemptsExhausted, h.Used)}
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	for n := h.Used + 1; ; n++ {
		err := r.attempt(ctx, n, attempt)
		if err == nil {
			span.SetAttributes(attribute.Int("tenure.attempts", n))
			return nil
		}
		span.RecordError(err)
		retry := KindOf(err) == KindRetryable && !errors.Is(err, ErrPending) && ctx.Err() == nil && n < r.policy.MaxAttempts
		var delay time.Duration
		if retry {
			delay = r.policy.Backoff(n, err, r.jitter())
		}
		if h.Failed != nil {
			h.Failed(n, err, delay)
		}
		if !retry {
			outcome = kindLabel(err)
			if errors.Is(err, ErrPending) {
				return err
			}
			if ctx.Err() != nil {
				return err
			}
			if KindOf(err) == KindRetryable {
				outcome = "exhausted"
				err = &Error{Kind: KindPermanent, Err: fmt.Errorf("%w after %d attempts: %w", ErrAttemptsExhausted, n, err)}
			}
			span.SetStatus(codes.Error, err.Error())
			return err
		}
		r.retries.Add(ctx, 1, metric.WithAttributeSet(r.attrs))
		if err := sleep(ctx, delay); err != nil {
			outcome = "cancelled"
			return err
		}
	}
}

func (r *Runner) attempt(ctx context.Context, n int, fn func(context.Context, int) error) error {
	release, err := r.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	return fn(ctx, n)
}

// acquire takes a concurrency slot.
func (r *Runner) acquire(ctx context.Context) (func(), error) {
	select {
	case r.slots <- struct{}{}:
		return func() { <-r.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// heartbeat calls h.Heartbeat every h.HeartbeatEvery until the returned stop is called; stop
// returns once no further heartbeat can be sent.
func heartbeat(h Hooks) (stop func()) {
	if h.Heartbeat == nil || h.HeartbeatEvery <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(h.HeartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				h.Heartbeat()
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
