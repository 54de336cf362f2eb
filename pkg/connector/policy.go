package connector

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Policy is how a host drives one target: how fast, how many operations at once, how often it
// retries and how long it waits in between. It belongs to the host, not the connector, so
// every connector gets the same behaviour and operators tune it per target in the connectors
// file:
//
//	connectors:
//	  - name: ehr-scim
//	    type: scim
//	    policy:
//	      rate: 10            # calls per second
//	      burst: 5
//	      concurrency: 4      # operations at once
//	      max_attempts: 12
//	      backoff_initial: 1s # doubles per attempt, with jitter
//	      backoff_max: 2m
//	      timeout: 30s        # per call
//
// The zero value means "use the defaults" field by field.
type Policy struct {
	// Rate is the most calls per second the host makes to the target; 0 means no limit.
	Rate float64 `yaml:"rate"`
	// Burst is how many calls may go back to back above Rate; default ceil(Rate), at least 1.
	Burst int `yaml:"burst"`
	// Concurrency bounds the operations running against the target at once (default 4).
	Concurrency int `yaml:"concurrency"`
	// MaxAttempts is how often one operation is tried before it is given up and dead-lettered
	// for an operator (default 12: with the default back-off, about 6 to 12 minutes).
	MaxAttempts int `yaml:"max_attempts"`
	// BackoffInitial is the delay before the second attempt (default 1s); it doubles with each
	// further attempt up to BackoffMax (default 2m). Each delay is jittered down by up to half
	// so that many failed operations do not retry in lockstep.
	BackoffInitial time.Duration `yaml:"backoff_initial"`
	BackoffMax     time.Duration `yaml:"backoff_max"`
	// Timeout bounds one call to the target (default 30s).
	Timeout time.Duration `yaml:"timeout"`
	// MaxRetryAfter caps a target's Retry-After hint (default 10m), so a wrong header cannot
	// hold a leaver's disable for a day.
	MaxRetryAfter time.Duration `yaml:"max_retry_after"`
	// Lifecycle: deletion after a grace period, reconciliation, orphans (see Lifecycle).
	Lifecycle `yaml:",inline"`
}

// Policy defaults.
const (
	DefaultConcurrency    = 4
	DefaultMaxAttempts    = 12
	DefaultBackoffInitial = time.Second
	DefaultBackoffMax     = 2 * time.Minute
	DefaultCallTimeout    = 30 * time.Second
	DefaultMaxRetryAfter  = 10 * time.Minute
)

// Limits that catch typos (a rate of 1e9, 100000 attempts) rather than real needs.
const (
	maxConcurrency = 1000
	maxAttempts    = 1000
)

// Validate reports every field out of range, each named as in the connectors file.
func (p Policy) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("policy.%s: "+format, append([]any{field}, args...)...))
	}
	if p.Rate < 0 || math.IsNaN(p.Rate) || math.IsInf(p.Rate, 0) {
		bad("rate", "must be a number of calls per second >= 0 (0 means no limit), got %v", p.Rate)
	}
	if p.Burst < 0 {
		bad("burst", "must be >= 0, got %d", p.Burst)
	}
	if p.Burst > 0 && p.Rate == 0 {
		bad("burst", "needs a rate (burst limits calls above the rate)")
	}
	if p.Concurrency < 0 || p.Concurrency > maxConcurrency {
		bad("concurrency", "must be between 1 and %d (0 means %d), got %d", maxConcurrency, DefaultConcurrency, p.Concurrency)
	}
	if p.MaxAttempts < 0 || p.MaxAttempts > maxAttempts {
		bad("max_attempts", "must be between 1 and %d (0 means %d), got %d", maxAttempts, DefaultMaxAttempts, p.MaxAttempts)
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"backoff_initial", p.BackoffInitial}, {"backoff_max", p.BackoffMax}, {"timeout", p.Timeout}, {"max_retry_after", p.MaxRetryAfter}} {
		switch {
		case d.v < 0:
			bad(d.field, "must not be negative, got %s", d.v)
		case d.v > 0 && d.v < time.Millisecond:
			// A bare number decodes as nanoseconds: "timeout: 30" would time out every call.
			bad(d.field, "%s is below 1ms; write the unit, e.g. 30s", d.v)
		}
	}
	if p.BackoffInitial > 0 && p.BackoffMax > 0 && p.BackoffMax < p.BackoffInitial {
		bad("backoff_max", "%s is shorter than backoff_initial %s", p.BackoffMax, p.BackoffInitial)
	}
	errs = append(errs, p.Lifecycle.validate()...)
	return errors.Join(errs...)
}

// WithDefaults returns p with every unset field at its default.
func (p Policy) WithDefaults() Policy {
	if p.Rate > 0 && p.Burst == 0 {
		p.Burst = max(1, int(math.Ceil(p.Rate)))
	}
	if p.Concurrency == 0 {
		p.Concurrency = DefaultConcurrency
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.BackoffInitial == 0 {
		p.BackoffInitial = DefaultBackoffInitial
	}
	if p.BackoffMax == 0 {
		p.BackoffMax = max(DefaultBackoffMax, p.BackoffInitial)
	}
	if p.Timeout == 0 {
		p.Timeout = DefaultCallTimeout
	}
	if p.MaxRetryAfter == 0 {
		p.MaxRetryAfter = DefaultMaxRetryAfter
	}
	return p
}

// Backoff returns the delay after failed attempt n (1-based) that failed with err: the
// exponential back-off, jittered into [d/2, d] by jitter (a number in [0, 1)), or the target's
// Retry-After hint (capped at MaxRetryAfter) when that is longer. Call it on a policy with
// defaults applied.
func (p Policy) Backoff(n int, err error, jitter float64) time.Duration {
	d := p.BackoffInitial
	for i := 1; i < n && d < p.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, p.BackoffMax)
	d -= time.Duration(float64(d/2) * jitter)
	if ra := min(RetryAfterOf(err), p.MaxRetryAfter); ra > d {
		d = ra
	}
	return d
}
