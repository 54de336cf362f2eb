// Package manual is the connector for systems without an API (a legacy lab system, a badge
// database someone edits by hand). Every change becomes a task in the provisioner's operator
// queue; an operator does the work and completes the task with an attestation (who, when,
// evidence text or a file's SHA-256). The attestation is the read-back: the account counts
// as changed only once someone attested it, so a leaver case with a manual account completes
// only after a person confirmed the disable.
//
//	connectors:
//	  - name: lab-legacy
//	    type: manual
//	    system: lab
//	    config:
//	      deadline: 1h
//	      instructions: "LabSys admin console → Users. Disable the user and attach a screenshot."
//
// The connector only works inside a host that provides a connector.TaskQueue (the
// provisioner binds its queue on start).
package manual

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/tenure-dev/tenure/pkg/connector"
)

// TypeName is the registered connector type.
const TypeName = "manual"

// DefaultDeadline is how long an operator has for a task unless configured.
const DefaultDeadline = time.Hour

const (
	minDeadline     = time.Minute
	maxDeadline     = 30 * 24 * time.Hour
	maxInstructions = 4000
)

// Config is the manual connector's configuration.
type Config struct {
	// Deadline is how long an operator has for a task before it is overdue and alerts
	// (default 1h, between 1m and 720h).
	Deadline time.Duration `yaml:"deadline"`
	// Instructions tell the operator where and how to make the change.
	Instructions string `yaml:"instructions"`
}

func init() { connector.Register(TypeName, open) }

func open(_ context.Context, decode func(any) error) (connector.Connector, error) {
	var cfg Config
	if err := decode(&cfg); err != nil {
		return nil, err
	}
	return New(cfg)
}

// New returns a manual connector; it needs a task queue (UseTaskQueue) before use.
func New(cfg Config) (*Connector, error) {
	if cfg.Deadline == 0 {
		cfg.Deadline = DefaultDeadline
	}
	var errs []error
	if cfg.Deadline < minDeadline || cfg.Deadline > maxDeadline {
		errs = append(errs, fmt.Errorf("deadline: must be between %s and %s, got %s", minDeadline, maxDeadline, cfg.Deadline))
	}
	if utf8.RuneCountInString(cfg.Instructions) > maxInstructions {
		errs = append(errs, fmt.Errorf("instructions: at most %d characters", maxInstructions))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Connector{cfg: cfg}, nil
}

// Connector turns account changes into operator tasks.
type Connector struct {
	cfg   Config
	queue atomic.Pointer[queueBox]
}

type queueBox struct{ q connector.TaskQueue }

var (
	_ connector.Creator            = (*Connector)(nil)
	_ connector.Disabler           = (*Connector)(nil)
	_ connector.Enabler            = (*Connector)(nil)
	_ connector.Deleter            = (*Connector)(nil)
	_ connector.EntitlementGranter = (*Connector)(nil)
	_ connector.TaskQueueUser      = (*Connector)(nil)
	_ connector.TaskDeadliner      = (*Connector)(nil)
)

// UseTaskQueue binds the host's operator queue.
func (c *Connector) UseTaskQueue(q connector.TaskQueue) { c.queue.Store(&queueBox{q}) }

// TaskDeadline is how long an operator has for a task.
func (c *Connector) TaskDeadline() time.Duration { return c.cfg.Deadline }

// errUnbound is permanent: no retry binds a queue.
var errUnbound = connector.Permanent(errors.New("manual connector has no task queue: it runs only inside the provisioner"))

func (c *Connector) q() (connector.TaskQueue, error) {
	b := c.queue.Load()
	if b == nil {
		return nil, errUnbound
	}
	return b.q, nil
}

// GetAccount returns the account as the latest attestation describes it; an account nobody
// ever attested is not found, since tenure has no evidence it exists.
func (c *Connector) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	q, err := c.q()
	if err != nil {
		return connector.Account{}, err
	}
	return q.Attested(ctx, ref)
}

// task opens a task unless the attested state already is what op wants.
func (c *Connector) task(ctx context.Context, op string, ref connector.AccountRef, done func(connector.Account) bool) error {
	q, err := c.q()
	if err != nil {
		return err
	}
	a, err := q.Attested(ctx, ref)
	switch {
	case err == nil && done != nil && done(a):
		return nil
	case err != nil && !errors.Is(err, connector.ErrNotFound):
		return err
	}
	id, err := q.OpenTask(ctx, connector.TaskRequest{Op: op, Ref: ref, Instructions: c.cfg.Instructions, Deadline: c.cfg.Deadline})
	if err != nil {
		return err
	}
	return connector.Pending(id)
}

// CreateAccount opens a task to create the account with its entitlements. An account already
// attested as existing is returned unchanged (a late joiner never re-enables it).
func (c *Connector) CreateAccount(ctx context.Context, spec connector.AccountSpec) (connector.Account, error) {
	ref := connector.AccountRef{Username: spec.Username}
	q, err := c.q()
	if err != nil {
		return connector.Account{}, err
	}
	if a, err := q.Attested(ctx, ref); err == nil && a.State != connector.StateAbsent {
		return a, nil
	}
	return connector.Account{}, c.task(ctx, connector.CapCreate, ref, nil)
}

// DisableAccount opens a task to disable the account, unless it is attested disabled or gone.
func (c *Connector) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.task(ctx, connector.CapDisable, ref, func(a connector.Account) bool {
		return a.State == connector.StateDisabled || a.State == connector.StateAbsent
	})
}

// EnableAccount opens a task to enable the account, unless it is attested enabled.
func (c *Connector) EnableAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.task(ctx, connector.CapEnable, ref, func(a connector.Account) bool { return a.State == connector.StateEnabled })
}

// DeleteAccount opens a task to delete the account, unless it is attested gone.
func (c *Connector) DeleteAccount(ctx context.Context, ref connector.AccountRef) error {
	return c.task(ctx, connector.CapDelete, ref, func(a connector.Account) bool { return a.State == connector.StateAbsent })
}

// GrantEntitlement opens a task to bring the account's entitlements to their desired set
// (the host's queue knows the whole set, so one task covers every grant and revoke).
func (c *Connector) GrantEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.task(ctx, connector.CapEntitlements, ref, func(a connector.Account) bool { return contains(a.Entitlements, entitlement) })
}

// RevokeEntitlement: see GrantEntitlement.
func (c *Connector) RevokeEntitlement(ctx context.Context, ref connector.AccountRef, entitlement string) error {
	return c.task(ctx, connector.CapEntitlements, ref, func(a connector.Account) bool { return !contains(a.Entitlements, entitlement) })
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
