// Package provisioner turns access decisions and HR events into account changes in target
// systems. It keeps the desired state of every account link, fans a leaver out to one task
// per linked account, and confirms each change by reading the target back. The connectors
// only talk to their targets; this host owns desired state, retries (JetStream redelivery
// with back-off), dead letters, read-back verification and the leaver case.
package provisioner

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
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
	// Concurrency bounds the commands run against the target at once (default 4).
	Concurrency int
}

// Config configures the provisioner.
type Config struct {
	Targets []Target
	// CaseDeadline is how long a leaver case may stay open before it raises
	// tenure.alert.deprovision_overdue (default 5 minutes for automatic targets).
	CaseDeadline time.Duration
	// MaxDeliver is how many attempts a command gets before it is dead-lettered (default 10).
	MaxDeliver int
	// BackOff between attempts (default 250ms, 1s, 5s, 15s, 30s).
	BackOff []time.Duration
}

// Deps are the service's connections.
type Deps struct {
	Pool *pgxpool.Pool
	JS   jetstream.JetStream
	Log  *slog.Logger
}

// Service is the provisioner.
type Service struct {
	provisionerv1.UnimplementedProvisioningServiceServer
	cfg       Config
	pool      *pgxpool.Pool
	js        jetstream.JetStream
	log       *slog.Logger
	relay     *pgstore.Relay
	targets   map[string]*Target
	consumers []*natsx.Consumer
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
	if len(cfg.BackOff) == 0 {
		cfg.BackOff = []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}
	}
	if err := pgstore.Migrate(ctx, d.Pool, schema, migrations, "migrations"); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, pool: d.Pool, js: d.JS, log: d.Log.With("service", "provisioner"), relay: pgstore.NewRelay(d.Pool, d.JS, d.Log), targets: map[string]*Target{}}
	for i := range cfg.Targets {
		t := &cfg.Targets[i]
		if t.Name == "" || t.Conn == nil {
			return nil, fmt.Errorf("provisioner: target %d needs a name and a connector", i)
		}
		if _, dup := s.targets[t.Name]; dup {
			return nil, fmt.Errorf("provisioner: duplicate target %q", t.Name)
		}
		if t.Concurrency == 0 {
			t.Concurrency = 4
		}
		s.targets[t.Name] = t
	}
	c, err := natsx.NewConsumer(ctx, d.JS, natsx.ConsumerSpec{
		Durable:        durable,
		FilterSubjects: []string{"tenure.hr.>", "tenure.access.>"},
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
			Concurrency:    t.Concurrency,
			MaxDeliver:     cfg.MaxDeliver,
			BackOff:        cfg.BackOff,
			AckWait:        time.Minute,
		}, func(ctx context.Context, msg jetstream.Msg) error { return s.work(ctx, t, msg) }, s.log.With("target", t.Name))
		if err != nil {
			return nil, err
		}
		s.consumers = append(s.consumers, c)
	}
	return s, nil
}

func workDurable(target string) string { return "provisioner-" + target }

// Run handles events and commands until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	errc := make(chan error, len(s.consumers)+2)
	go func() { errc <- s.relay.Run(ctx) }()
	go func() { errc <- s.watchOverdue(ctx) }()
	for _, c := range s.consumers {
		go func() { errc <- c.Run(ctx) }()
	}
	var errs []error
	for i := 0; i < len(s.consumers)+2; i++ {
		errs = append(errs, <-errc)
	}
	for _, t := range s.targets {
		connector.Close(t.Conn)
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
		provisionerv1.ProvisioningService_ListQueues_FullMethodName:    {authn.RoleOperator},
		provisionerv1.ProvisioningService_ListAccounts_FullMethodName:  read,
	}
}
