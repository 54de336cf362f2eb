// Package provisioner turns access decisions and HR events into account changes in target
// systems. It keeps the desired state of every account link, fans a leaver out to one task
// per linked account, and confirms each change by reading the target back. The connectors
// only talk to their targets; this host owns desired state, the execution policy per target
// (connector.Runner: retries with back-off and jitter, Retry-After, rate and concurrency
// limits, spans and metrics), dead letters operators can re-drive, manual tasks finished by
// an operator's attestation, read-back verification and the leaver case.
package provisioner

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

//go:embed migrations/*.sql
var migrations embed.FS

const (
	schema  = "provisioner"
	durable = "provisioner"
	source  = "tenure/provisioner"
)

// Target is one connector instance the provisioner drives.
type Target struct {
	// Name is the connector instance name, as policy systems refer to it.
	Name   string
	Type   string
	System string
	Conn   connector.Connector
	// Policy is the host's execution policy for the target: rate limit, concurrency,
	// attempts and back-off (connector.Policy; zero fields take the defaults).
	Policy connector.Policy

	runner *connector.Runner
	state  *targetState
	// taskDeadline is how long an operator has for a task on a manual target (0: automatic).
	taskDeadline time.Duration
	// work consumes the target's command queue.
	work *natsx.Consumer
}

// Config configures the provisioner.
type Config struct {
	Targets []Target
	// CaseDeadline is how long a leaver case may stay open before it raises
	// tenure.alert.deprovision_overdue (default 5 minutes for automatic targets).
	CaseDeadline time.Duration
	// MaxDeliver is how many attempts a command gets before it is dead-lettered (default 10).
	MaxDeliver int
	// BackOff between redeliveries of a message whose handling failed outside the connector
	// (a database error, a crash); connector errors are retried under the target's Policy
	// (default 250ms, 1s, 5s, 15s, 30s).
	BackOff []time.Duration
	// OverdueInterval is how often overdue cases and tasks are looked for (default 10s).
	OverdueInterval time.Duration
	// SchedulerInterval is how often deletions past their grace period are issued and due
	// reconciliations started (default 30s). The schedules themselves are per target
	// (Policy.DeleteAfter, Policy.ReconcileInterval) and stored, so they survive restarts.
	SchedulerInterval time.Duration
}

// targetState is what the service keeps about a target while it runs.
type targetState struct {
	// reconciling allows one reconciliation of the target at a time.
	reconciling sync.Mutex

	mu     sync.Mutex
	health provisionerv1.ConnectorHealth
}

// Deps are the service's connections.
type Deps struct {
	Pool *pgxpool.Pool
	JS   jetstream.JetStream
	Log  *slog.Logger
	// AtomicBatch: outbox rounds of at least this many events go to JetStream as one atomic
	// batch (pgstore.Relay.PublishInAtomicBatches); 0 publishes event by event.
	AtomicBatch int
}

// Service is the provisioner.
type Service struct {
	provisionerv1.UnimplementedProvisioningServiceServer
	cfg   Config
	pool  *pgxpool.Pool
	js    jetstream.JetStream
	log   *slog.Logger
	relay *pgstore.Relay
	// finisher records finished commands in group commits (finish.go).
	finisher finisher
	// lanes runs the commands of one link one at a time in this process (worker.go).
	lanes     linkLanes
	targets   map[string]*Target
	consumers []*natsx.Consumer
	// rawReadDenied: reading the stream's raw messages failed once; queue ages come from the
	// commands this process holds (queueAge).
	rawReadDenied atomic.Bool
	// stop ends when Run's context does: long waits between attempts watch it, since message
	// handlers run on a context that outlives Run's so they can finish their transaction.
	stop    context.Context
	metrics metric.Registration
	// bg tracks reconciliations the scheduler started, so Run waits for them before it
	// closes the connectors.
	bg sync.WaitGroup
	// started is when the service was created: a target that never reconciled is first due
	// its interval after it.
	started time.Time
}

// New migrates the schema and creates the event consumer and one work-queue consumer per
// target.
func New(ctx context.Context, cfg Config, d Deps) (*Service, error) {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if cfg.CaseDeadline == 0 {
		cfg.CaseDeadline = 5 * time.Minute
	}
	if cfg.MaxDeliver == 0 {
		cfg.MaxDeliver = 10
	}
	if cfg.OverdueInterval == 0 {
		cfg.OverdueInterval = 10 * time.Second
	}
	if cfg.SchedulerInterval == 0 {
		cfg.SchedulerInterval = 30 * time.Second
	}
	if len(cfg.BackOff) == 0 {
		cfg.BackOff = []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}
	}
	if err := pgstore.Migrate(ctx, d.Pool, schema, migrations, "migrations"); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, pool: d.Pool, js: d.JS, log: d.Log.With("service", "provisioner"), relay: pgstore.NewRelay(d.Pool, d.JS, d.Log), targets: map[string]*Target{},
		stop: context.Background(), started: time.Now()}
	s.relay.PublishInAtomicBatches(d.AtomicBatch)
	s.finisher.s = s
	for i := range cfg.Targets {
		t := &cfg.Targets[i]
		if t.Name == "" || t.Conn == nil {
			return nil, fmt.Errorf("provisioner: target %d needs a name and a connector", i)
		}
		if _, dup := s.targets[t.Name]; dup {
			return nil, fmt.Errorf("provisioner: duplicate target %q", t.Name)
		}
		r, err := connector.NewRunner(t.Name, t.Policy)
		if err != nil {
			return nil, fmt.Errorf("provisioner: %w", err)
		}
		t.runner, t.Policy, t.state = r, r.Policy(), &targetState{}
		if err := checkLifecycle(t); err != nil {
			return nil, fmt.Errorf("provisioner: target %q: %w", t.Name, err)
		}
		if u, ok := t.Conn.(connector.TaskQueueUser); ok {
			u.UseTaskQueue(&taskQueue{s: s, target: t})
		}
		if d, ok := t.Conn.(connector.TaskDeadliner); ok {
			t.taskDeadline = d.TaskDeadline()
		}
		s.targets[t.Name] = t
	}
	c, err := natsx.NewConsumer(ctx, d.JS, natsx.ConsumerSpec{
		Durable:        durable,
		FilterSubjects: []string{"tenure.hr.>", "tenure.access.>"},
		// Workers are independent: their events run side by side (a mass termination opens
		// cases in parallel), while one worker's events keep stream order.
		Concurrency: eventConcurrency,
		Lane:        events.WorkerTokenOf,
	}, s.handleEvent, s.log)
	if err != nil {
		return nil, err
	}
	s.consumers = append(s.consumers, c)
	for _, t := range s.targets {
		t := t
		c, err := natsx.NewConsumer(ctx, d.JS, natsx.ConsumerSpec{
			Durable:        workDurable(t.Name),
			FilterSubjects: []string{"tenure.provision." + t.Name + ".>"},
			// More handlers than the target's concurrency: a command waiting out its back-off
			// holds a handler but not one of the target's slots (the runner bounds those).
			Concurrency:   max(16, 4*t.Policy.Concurrency),
			MaxAckPending: max(1000, 8*t.Policy.Concurrency),
			MaxDeliver:    cfg.MaxDeliver,
			BackOff:       cfg.BackOff,
			AckWait:       ackWait,
			TrackHeld:     true, // ListQueues reports the oldest command in hand
		}, func(ctx context.Context, msg jetstream.Msg) error { return s.work(ctx, t, msg) }, s.log.With("target", t.Name))
		if err != nil {
			return nil, err
		}
		t.work = c
		s.consumers = append(s.consumers, c)
	}
	dlq, err := s.deadLetterConsumers(ctx)
	if err != nil {
		return nil, err
	}
	s.consumers = append(s.consumers, dlq...)
	if err := s.registerMetrics(); err != nil {
		return nil, fmt.Errorf("provisioner: metrics: %w", err)
	}
	return s, nil
}

// ackWait is how long a command may go without a heartbeat before JetStream redelivers it;
// the worker heartbeats every ackWait/3 for as long as it holds the command (its turn in the
// link's lane, every wait of the runner and the calls themselves).
const ackWait = time.Minute

func workDurable(target string) string { return "provisioner-" + target }

// Run handles events and commands until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	s.stop = ctx
	if n, err := s.redriveAtStart(ctx); err != nil {
		s.log.WarnContext(ctx, "start-up re-drive failed; redelivery will carry the commands in flight", "err", err)
	} else if n > 0 {
		s.log.InfoContext(ctx, "re-drove accounts not yet verified at their desired state", "accounts", n)
	}
	errc := make(chan error, len(s.consumers)+3)
	go func() { errc <- s.relay.Run(ctx) }()
	go func() { errc <- s.watchOverdue(ctx) }()
	go func() { errc <- s.schedule(ctx) }()
	for _, c := range s.consumers {
		go func() { errc <- c.Run(ctx) }()
	}
	var errs []error
	for i := 0; i < len(s.consumers)+3; i++ {
		errs = append(errs, <-errc)
	}
	s.bg.Wait()
	for _, t := range s.targets {
		connector.Close(t.Conn)
	}
	if s.metrics != nil {
		errs = append(errs, s.metrics.Unregister())
	}
	return errors.Join(errs...)
}

// RegisterGRPC registers ProvisioningService.
func (s *Service) RegisterGRPC(g *grpc.Server) { provisionerv1.RegisterProvisioningServiceServer(g, s) }

// AuthRules are the roles allowed per method.
func (s *Service) AuthRules() authn.Rules {
	read := []authn.Role{authn.RoleOperator, authn.RoleAuditor, authn.RoleSecurity}
	return authn.Rules{
		provisionerv1.ProvisioningService_GetLeaverCase_FullMethodName: read,
		provisionerv1.ProvisioningService_ListCases_FullMethodName:     read,
		provisionerv1.ProvisioningService_ListQueues_FullMethodName:    {authn.RoleOperator},
		provisionerv1.ProvisioningService_ListAccounts_FullMethodName:  read,
		provisionerv1.ProvisioningService_ListTasks_FullMethodName:     read,
		// Only an operator attests work done by hand or re-drives failed work.
		provisionerv1.ProvisioningService_CompleteManualTask_FullMethodName: {authn.RoleOperator},
		provisionerv1.ProvisioningService_ListDeadLetters_FullMethodName:    {authn.RoleOperator, authn.RoleAuditor},
		provisionerv1.ProvisioningService_RetryDeadLetter_FullMethodName:    {authn.RoleOperator},
		provisionerv1.ProvisioningService_RetryAccount_FullMethodName:       {authn.RoleOperator},
		provisionerv1.ProvisioningService_RetryTask_FullMethodName:          {authn.RoleOperator},
		provisionerv1.ProvisioningService_LinkAccount_FullMethodName:        {authn.RoleOperator},
		// Connector health and findings are for whoever watches access: operators, auditors
		// and security. Starting a reconciliation (it may disable orphans) is an operator's.
		provisionerv1.ProvisioningService_ListConnectors_FullMethodName: read,
		provisionerv1.ProvisioningService_ListFindings_FullMethodName:   read,
		provisionerv1.ProvisioningService_Reconcile_FullMethodName:      {authn.RoleOperator},
	}
}

// checkLifecycle rejects a lifecycle policy the target's connector cannot carry out; errors
// name the policy field.
func checkLifecycle(t *Target) error {
	if err := t.Policy.Validate(); err != nil {
		return err
	}
	var errs []error
	if _, ok := t.Conn.(connector.Deleter); t.Policy.DeleteAfter > 0 && !ok {
		errs = append(errs, fmt.Errorf("policy.delete_after: connector type %s cannot delete accounts", t.Type))
	}
	_, lists := t.Conn.(connector.Lister)
	if t.Policy.ReconcileInterval != nil && *t.Policy.ReconcileInterval > 0 && !lists {
		errs = append(errs, fmt.Errorf("policy.reconcile_interval: connector type %s cannot list accounts (set 0 or leave it out)", t.Type))
	}
	if _, ok := t.Conn.(connector.Disabler); t.Policy.DisableOrphans && (!ok || !lists) {
		errs = append(errs, fmt.Errorf("policy.disable_orphans: connector type %s cannot list and disable accounts", t.Type))
	}
	return errors.Join(errs...)
}

// eventConcurrency is how many workers' HR and access events are handled at once.
const eventConcurrency = 8
