package main

import (
	"errors"
	"flag"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes, for scripts and scheduled jobs (docs/ledger.md):
//
//	0  done (for verify: intact)
//	1  error
//	2  usage
//	3  tampering detected (ledger verify, evidence verify)
//	4  could not check: tenure or the witness unreachable, or not authenticated
const (
	exitError       = 1
	exitUsage       = 2
	exitTampered    = 3
	exitUnreachable = 4
)

// codeError carries an exit code.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func tampered(err error) error    { return &codeError{exitTampered, err} }
func unreachable(err error) error { return &codeError{exitUnreachable, err} }

// exitCode is the process exit code for run's error.
func exitCode(err error) int {
	var ce *codeError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, flag.ErrHelp):
		return exitUsage
	}
	return exitError
}

// unreachableStatus marks gRPC failures that mean "could not check" rather than an answer.
func unreachableStatus(err error) error {
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.Unauthenticated, codes.PermissionDenied, codes.DeadlineExceeded:
			return unreachable(err)
		}
	}
	return err
}
