package connector

import (
	"context"
	"fmt"
	"time"
)

// TaskRequest asks an operator to change an account by hand.
type TaskRequest struct {
	// Op is CapCreate, CapEnable, CapDisable, CapDelete or CapEntitlements (the account's
	// entitlements must change).
	Op  string
	Ref AccountRef
	// Instructions tell the operator where and how, from the connector's config.
	Instructions string
	// Deadline is how long the operator has before the task is overdue and alerts.
	Deadline time.Duration
}

// TaskQueue is the host's queue of work for humans, for connectors whose target has no API
// (the manual connector). The host decides what the task asks for from the account's desired
// state, keeps at most one open task per account, and records the operator's attestation,
// which is what the connector reads back.
type TaskQueue interface {
	// OpenTask opens a task for the account, or keeps the one already open if it asks for the
	// same thing. It returns the task id.
	OpenTask(ctx context.Context, req TaskRequest) (taskID string, err error)
	// Attested returns the account as the latest operator attestation describes it, or an
	// error matching ErrNotFound when no task for it was ever completed.
	Attested(ctx context.Context, ref AccountRef) (Account, error)
}

// TaskQueueUser is implemented by connectors that need the host's TaskQueue. A host binds the
// queue once, before the first call.
type TaskQueueUser interface {
	UseTaskQueue(q TaskQueue)
}

// TaskDeadliner is implemented by connectors whose work is done by people, to tell the host
// how long a task may take (it sets leaver case deadlines from it).
type TaskDeadliner interface {
	TaskDeadline() time.Duration
}

// Pending returns an error matching ErrPending that names the task an operator must finish.
func Pending(taskID string) error {
	return fmt.Errorf("%w: task %s", ErrPending, taskID)
}
