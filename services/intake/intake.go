// Package intake is tenure's HR intake service. It receives HR lifecycle events from HRIS
// webhooks (Standard Webhooks signatures, one or more secrets per source), keeps the worker
// registry (the current HR record per worker and its history) and publishes each event as an
// eventsv1.WorkerEvent on tenure.hr.<kind>.<worker>, answering the webhook 2xx only once
// JetStream has acknowledged the event. Events effective in the future are held and fire at
// their time, ended contracts become leavers, and HR snapshots (rosters) are reconciled with
// the registry; those events go out through the transactional outbox. It serves
// WorkforceService (GetWorker, ListWorkers, GetHistory, Reconcile) over gRPC.
//
// Source formats are pluggable (RegisterFormat); built in: "canonical" (HREvent), "bamboohr",
// "hibob" and "workday".
package intake

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/webhook"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// Schema is the service's Postgres schema.
const Schema = "intake"

//go:embed migrations/*.sql
var migrations embed.FS

// Deps are the service's connections.
type Deps struct {
	// Pool from pgstore.Connect(ctx, url, "intake").
	Pool *pgxpool.Pool
	// JS publishes to the TENURE_EVENTS stream, which must exist.
	JS  jetstream.JetStream
	Log *slog.Logger
	// AtomicBatch: outbox rounds of at least this many events go to JetStream as one atomic
	// batch (pgstore.Relay.PublishInAtomicBatches); 0 publishes event by event.
	AtomicBatch int
}

// Service is the intake service.
type Service struct {
	cfg     Config
	pool    *pgxpool.Pool
	pub     *natsx.GroupPublisher // publishes webhook events (commit.go)
	log     *slog.Logger
	now     func() time.Time
	sources map[string]*source
	relay   *pgstore.Relay
	// wake pokes the scheduler when an event is held, so a short hold fires on time.
	wake chan struct{}
	// commits group-commits webhook deliveries (commit.go).
	commits *committer
	// lastPurge is when receipts past their retention were last deleted.
	lastPurge atomic.Pointer[time.Time]
}

// source is a configured webhook source, ready to verify and decode deliveries.
type source struct {
	name     string
	format   string
	verifier *webhook.Verifier
	// ownVerifier replaces verifier for formats with the vendor's own signature.
	ownVerifier RequestVerifier
	adapter     Adapter
	secrets     int
	// credentialName names the API credential of a thin format for operators (never its value).
	credentialName string
}

// ErrWorkerNotFound is returned by GetWorker for a worker the registry does not hold.
var ErrWorkerNotFound = errors.New("intake: worker not found")

// New checks the configuration, migrates the intake schema and checks that the streams exist.
func New(ctx context.Context, cfg Config, d Deps) (*Service, error) {
	if d.Pool == nil {
		return nil, errors.New("intake: Deps.Pool is required")
	}
	if d.JS == nil {
		return nil, errors.New("intake: Deps.JS is required")
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RescindGrace <= 0 {
		cfg.RescindGrace = DefaultRescindGrace
	}
	if cfg.ScheduleInterval <= 0 {
		cfg.ScheduleInterval = DefaultScheduleInterval
	}
	if cfg.Location == nil {
		cfg.Location = time.UTC
	}
	if cfg.MaxSnapshotBytes <= 0 {
		cfg.MaxSnapshotBytes = DefaultMaxSnapshotBytes
	}
	if cfg.ReceiptRetention <= 0 {
		cfg.ReceiptRetention = DefaultReceiptRetention
	}
	if cfg.EffectivePast <= 0 {
		cfg.EffectivePast = DefaultEffectivePast
	}
	if cfg.EffectiveFuture <= 0 {
		cfg.EffectiveFuture = DefaultEffectiveFuture
	}
	log := d.Log.With("service", "intake")
	s := &Service{cfg: cfg, pool: d.Pool, log: log, now: cfg.Now, sources: map[string]*source{},
		relay: pgstore.NewRelay(d.Pool, d.JS, log), wake: make(chan struct{}, 1)}
	s.relay.PublishInAtomicBatches(d.AtomicBatch)
	s.pub = natsx.NewGroupPublisher(d.JS, log)
	s.pub.Timeout = cfg.PublishTimeout
	s.commits = &committer{s: s}
	names := make([]string, 0, len(cfg.Sources))
	for name := range cfg.Sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		src, err := buildSource(name, cfg.Sources[name], cfg.Now)
		if err != nil {
			return nil, err
		}
		s.sources[name] = src
	}
	if err := pgstore.Migrate(ctx, d.Pool, Schema, migrations, "migrations"); err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	if err := natsx.CheckStreams(ctx, d.JS); err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	for _, name := range names {
		s.log.Info("webhook source configured", "source", name, "format", s.sources[name].format,
			"secrets", s.sources[name].secrets, "tolerance", s.sources[name].verifier.Tolerance.String())
	}
	return s, nil
}

func buildSource(name string, sc SourceConfig, now func() time.Time) (*source, error) {
	where := "intake: source " + name
	if err := checkSourceName(name); err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	if len(sc.Secrets) == 0 {
		return nil, fmt.Errorf("%s: no secrets configured", where)
	}
	v := &webhook.Verifier{Tolerance: sc.Tolerance, Now: now}
	if v.Tolerance < 0 {
		return nil, fmt.Errorf("%s: negative tolerance %s", where, sc.Tolerance)
	}
	if v.Tolerance == 0 {
		v.Tolerance = DefaultTolerance
	}
	format := sc.Format
	if format == "" {
		format = DefaultFormat
	}
	info, ok := lookupFormat(format)
	if !ok {
		return nil, fmt.Errorf("%s: unknown format %q (known: %v)", where, format, Formats())
	}
	if !info.ownSignature {
		for i, sec := range sc.Secrets {
			key, err := webhook.ParseSecret(sec)
			if err != nil {
				return nil, fmt.Errorf("%s: secrets[%d]: %s", where, i, secretErr(err))
			}
			v.Keys = append(v.Keys, key)
		}
	}
	sc.Format = format
	sc.Tolerance = v.Tolerance
	sc.now = now
	a, err := info.factory(name, sc)
	if err != nil {
		return nil, fmt.Errorf("%s: format %s: %w", where, format, err)
	}
	src := &source{name: name, format: format, verifier: v, adapter: a, secrets: len(sc.Secrets), credentialName: sc.API.Credential}
	if src.credentialName == "" {
		src.credentialName = "the api token of source " + name
	}
	if rv, ok := a.(RequestVerifier); ok {
		src.ownVerifier = rv
	} else if info.ownSignature {
		return nil, fmt.Errorf("%s: format %s does not verify its own signatures", where, format)
	}
	return src, nil
}

// RegisterGRPC registers WorkforceService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	intakev1.RegisterWorkforceServiceServer(g, &workforceServer{s: s})
}

// AuthRules are the roles allowed per gRPC method.
func (s *Service) AuthRules() authn.Rules {
	readers := []authn.Role{authn.RoleOperator, authn.RoleApprover, authn.RoleAuditor, authn.RoleSecurity}
	return authn.Rules{
		intakev1.WorkforceService_GetWorker_FullMethodName:   readers,
		intakev1.WorkforceService_ListWorkers_FullMethodName: readers,
		intakev1.WorkforceService_GetHistory_FullMethodName:  readers,
		// Reconcile can terminate workers: operators (and admins, who pass every rule).
		intakev1.WorkforceService_Reconcile_FullMethodName: {authn.RoleOperator, authn.RoleAdmin},
		// Findings: what the readers see; operators close them.
		intakev1.WorkforceService_ListFindings_FullMethodName:   readers,
		intakev1.WorkforceService_ResolveFinding_FullMethodName: {authn.RoleOperator, authn.RoleAdmin},
	}
}

// GetWorker returns a worker's current registry record, or ErrWorkerNotFound.
func (s *Service) GetWorker(ctx context.Context, workerID string) (*intakev1.GetWorkerResponse, error) {
	r, err := loadWorker(ctx, s.pool, workerID, false)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, fmt.Errorf("%w: %q", ErrWorkerNotFound, workerID)
	}
	return &intakev1.GetWorkerResponse{
		Worker:        r.worker,
		EffectiveTime: timestamppb.New(r.effectiveTime),
		UpdatedAt:     timestamppb.New(r.updatedAt),
		LastEventId:   r.lastEventID,
	}, nil
}

type workforceServer struct {
	intakev1.UnimplementedWorkforceServiceServer
	s *Service
}

func (w *workforceServer) GetWorker(ctx context.Context, req *intakev1.GetWorkerRequest) (*intakev1.GetWorkerResponse, error) {
	if req.GetWorkerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "worker_id is required")
	}
	resp, err := w.s.GetWorker(ctx, req.GetWorkerId())
	switch {
	case errors.Is(err, ErrWorkerNotFound):
		return nil, status.Errorf(codes.NotFound, "worker %q is not in the registry", req.GetWorkerId())
	case err != nil:
		w.s.log.ErrorContext(ctx, "GetWorker failed", "worker_id", req.GetWorkerId(), "err", err)
		return nil, status.Error(codes.Unavailable, "the worker registry is unavailable")
	}
	return resp, nil
}
