package connector

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrNotFound says the account does not exist in the target.
	ErrNotFound = errors.New("account not found")
	// ErrUnsupported says the connector cannot do what was asked. It wraps
	// errors.ErrUnsupported so either sentinel matches.
	ErrUnsupported = fmt.Errorf("connector: %w", errors.ErrUnsupported)
)

// ErrorKind tells the host what to do about a failed call.
type ErrorKind int

const (
	// KindRetryable: try again later (timeouts, rate limits, unavailable target). It is the
	// zero value because an error nobody classified should be retried, not dropped: a leaver's
	// disable that gives up early leaves access in place.
	KindRetryable ErrorKind = iota
	// KindPermanent: retrying will not help (bad request, missing permission, invalid
	// entitlement); the task fails and an operator looks at it.
	KindPermanent
	// KindNotFound: the account does not exist.
	KindNotFound
)

func (k ErrorKind) String() string {
	switch k {
	case KindRetryable:
		return "retryable"
	case KindPermanent:
		return "permanent"
	case KindNotFound:
		return "not found"
	default:
		return fmt.Sprintf("ErrorKind(%d)", int(k))
	}
}

// Error is an error classified by a connector. Connectors map their target's errors onto a
// kind in one place (their client code) so the host can decide retries without knowing the
// target.
type Error struct {
	Kind ErrorKind
	// RetryAfter is the target's hint (HTTP Retry-After, a rate-limit reset) for retryable
	// errors; zero leaves the delay to the host's backoff.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Kind.String() + " error"
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNotFound) true for a KindNotFound error even when Err is the
// target's own error, so callers need only one check.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.Kind == KindNotFound
}

// Retryable marks err as retryable. It returns nil for nil so it can wrap a call's result.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: KindRetryable, Err: err}
}

// RetryableAfter marks err as retryable no sooner than d.
func RetryableAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: KindRetryable, RetryAfter: d, Err: err}
}

// Permanent marks err as not worth retrying. It returns nil for nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: KindPermanent, Err: err}
}

// NotFound marks err as meaning the account does not exist, so errors.Is(err, ErrNotFound)
// holds while the message keeps the target's wording. It returns nil for nil.
func NotFound(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: KindNotFound, Err: err}
}

// KindOf classifies err. The outermost *Error decides; otherwise ErrNotFound means
// KindNotFound, ErrUnsupported (or errors.ErrUnsupported) means KindPermanent, and anything
// else, including context errors, is KindRetryable. Check err != nil first: KindOf(nil) is
// KindRetryable, which means nothing.
func KindOf(err error) ErrorKind {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Kind
	case errors.Is(err, ErrNotFound):
		return KindNotFound
	case errors.Is(err, errors.ErrUnsupported):
		return KindPermanent
	default:
		return KindRetryable
	}
}

// RetryAfterOf returns the retry hint of the outermost *Error in err's chain, or zero.
func RetryAfterOf(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}
