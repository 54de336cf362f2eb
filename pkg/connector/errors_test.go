package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"
)

func TestKindOf(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want ErrorKind
	}{
		{"unclassified", base, KindRetryable},
		{"context", context.DeadlineExceeded, KindRetryable},
		{"retryable", Retryable(base), KindRetryable},
		{"permanent", Permanent(base), KindPermanent},
		{"wrapped permanent", fmt.Errorf("disable: %w", Permanent(base)), KindPermanent},
		{"not found sentinel", ErrNotFound, KindNotFound},
		{"wrapped sentinel", fmt.Errorf("get: %w", ErrNotFound), KindNotFound},
		{"not found helper", NotFound(base), KindNotFound},
		{"unsupported", ErrUnsupported, KindPermanent},
		{"std unsupported", fmt.Errorf("x: %w", errors.ErrUnsupported), KindPermanent},
		{"outermost wins", Permanent(NotFound(base)), KindPermanent},
		{"explicit kind beats sentinel", Retryable(ErrNotFound), KindRetryable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KindOf(tt.err); got != tt.want {
				t.Errorf("KindOf(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestErrorIsAndUnwrap(t *testing.T) {
	inner := io.ErrUnexpectedEOF
	nf := NotFound(inner)
	if !errors.Is(nf, ErrNotFound) {
		t.Error("NotFound(x) does not match ErrNotFound")
	}
	if !errors.Is(nf, inner) {
		t.Error("NotFound(x) does not unwrap to x")
	}
	if nf.Error() != inner.Error() {
		t.Errorf("message = %q, want the inner %q", nf.Error(), inner.Error())
	}
	if errors.Is(Permanent(inner), ErrNotFound) {
		t.Error("a permanent error matches ErrNotFound")
	}
	if errors.Is(Retryable(inner), ErrNotFound) {
		t.Error("a retryable error matches ErrNotFound")
	}
	if !errors.Is(ErrUnsupported, errors.ErrUnsupported) {
		t.Error("ErrUnsupported does not match errors.ErrUnsupported")
	}
	var e *Error
	if !errors.As(fmt.Errorf("wrap: %w", Permanent(inner)), &e) || e.Kind != KindPermanent {
		t.Errorf("errors.As found %+v", e)
	}
	if (&Error{Kind: KindPermanent}).Error() != "permanent error" {
		t.Errorf("empty Error message = %q", (&Error{Kind: KindPermanent}).Error())
	}
}

func TestHelpersKeepNil(t *testing.T) {
	for name, f := range map[string]func(error) error{
		"Retryable": Retryable, "Permanent": Permanent, "NotFound": NotFound,
		"RetryableAfter": func(err error) error { return RetryableAfter(err, time.Second) },
	} {
		if f(nil) != nil {
			t.Errorf("%s(nil) != nil", name)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	err := fmt.Errorf("list: %w", RetryableAfter(errors.New("429"), 30*time.Second))
	if got := RetryAfterOf(err); got != 30*time.Second {
		t.Errorf("RetryAfterOf = %v, want 30s", got)
	}
	if KindOf(err) != KindRetryable {
		t.Errorf("KindOf = %v", KindOf(err))
	}
	if got := RetryAfterOf(errors.New("x")); got != 0 {
		t.Errorf("RetryAfterOf(plain) = %v", got)
	}
}
