// Package approval decides who may have what. It turns HR lifecycle events into access
// decisions from the policy: default deny, auto-approval only for birthright packages on
// systems without ePHI, movers lose what the new role lacks, leavers lose everything. Every
// decision goes out as tenure.access.<grant|revoke>.<worker> through the outbox.
package approval

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

//go:embed migrations/*.sql
var migrations embed.FS

const (
	schema  = "approval"
	durable = "approval"
	source  = "tenure/approval"
)

// Config configures the approval service.
type Config struct {
	Policy *Policy
}

// Deps are the service's connections.
type Deps struct {
	Pool *pgxpool.Pool
	JS   jetstream.JetStream
	Log  *slog.Logger
}

// Service is the approval service.
type Service struct {
	approvalv1.UnimplementedGovernanceServiceServer
	pool     *pgxpool.Pool
	relay    *pgstore.Relay
	consumer *natsx.Consumer
	log      *slog.Logger
	policy   atomic.Pointer[Policy]
}

// New migrates the schema and creates the consumer.
func New(ctx context.Context, cfg Config, d Deps) (*Service, error) {
	if cfg.Policy == nil {
		return nil, errors.New("approval: a policy is required")
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if err := pgstore.Migrate(ctx, d.Pool, schema, migrations, "migrations"); err != nil {
		return nil, err
	}
	s := &Service{pool: d.Pool, log: d.Log.With("service", "approval"), relay: pgstore.NewRelay(d.Pool, d.JS, d.Log)}
	s.policy.Store(cfg.Policy)
	c, err := natsx.NewConsumer(ctx, d.JS, natsx.ConsumerSpec{
		Durable:        durable,
		FilterSubjects: []string{"tenure.hr.>"},
	}, s.handle, s.log)
	if err != nil {
		return nil, err
	}
	s.consumer = c
	return s, nil
}

// Run handles HR events and publishes decisions until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- s.relay.Run(ctx) }()
	go func() { errc <- s.consumer.Run(ctx) }()
	err := errors.Join(<-errc, <-errc)
	return err
}

// RegisterGRPC registers GovernanceService.
func (s *Service) RegisterGRPC(g *grpc.Server) { approvalv1.RegisterGovernanceServiceServer(g, s) }

// AuthRules are the roles allowed per method.
func (s *Service) AuthRules() authn.Rules {
	return authn.Rules{
		approvalv1.GovernanceService_ListGrants_FullMethodName: {authn.RoleOperator, authn.RoleApprover, authn.RoleAuditor, authn.RoleSecurity},
	}
}

// SetPolicy swaps the policy used for new decisions.
func (s *Service) SetPolicy(p *Policy) { s.policy.Store(p) }

func (s *Service) handle(ctx context.Context, msg jetstream.Msg) error {
	var ev eventsv1.WorkerEvent
	if err := proto.Unmarshal(msg.Data(), &ev); err != nil {
		return natsx.Permanent(fmt.Errorf("decode %s: %w", msg.Subject(), err))
	}
	w := ev.GetWorker()
	if w.GetWorkerId() == "" {
		return natsx.Permanent(fmt.Errorf("%s: event without worker id", msg.Subject()))
	}
	meta := events.MetaOf(msg.Headers())
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		first, err := pgstore.Claim(ctx, tx, durable, meta.ID, msg.Subject())
		if err != nil || !first {
			return err
		}
		eff := ev.GetEffectiveTime().AsTime()
		if ev.GetEffectiveTime() == nil {
			eff = meta.Time
		}
		// Level-triggered: apply an event only if it is not older than what we applied, so a
		// late joiner never re-grants after a termination.
		var stored time.Time
		err = tx.QueryRow(ctx, "SELECT effective_time FROM workers WHERE worker_id = $1 FOR UPDATE", w.GetWorkerId()).Scan(&stored)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if err == nil && eff.Before(stored) {
			s.log.InfoContext(ctx, "ignoring stale HR event", "worker", w.GetWorkerId(), "event", meta.ID, "effective", eff, "applied", stored)
			return nil
		}
		status := w.GetStatus().String()
		if _, err := tx.Exec(ctx, `INSERT INTO workers (worker_id, status, job_code, effective_time) VALUES ($1, $2, $3, $4)
			ON CONFLICT (worker_id) DO UPDATE SET status = $2, job_code = $3, effective_time = $4, updated_at = now()`,
			w.GetWorkerId(), status, w.GetJobCode(), eff); err != nil {
			return err
		}
		var out []events.Event
		switch ev.GetKind() {
		case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER:
			out, err = s.revokeAll(ctx, tx, w.GetWorkerId(), "leaver: "+ev.GetHrEventType())
		case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER,
			eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_RESCIND:
			out, err = s.converge(ctx, tx, w)
		default:
			// Leave start suspends accounts in the provisioner; grants stay.
			return nil
		}
		if err != nil {
			return err
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err != nil {
		return err
	}
	s.relay.Poke()
	return nil
}

type grantRow struct {
	id, system, pkg, connector, role, requestID string
	entitlements                                []string
}

func activeGrants(ctx context.Context, tx pgx.Tx, worker string) ([]grantRow, error) {
	rows, err := tx.Query(ctx, `SELECT grant_id, system, package, connector, role, request_id, entitlements
		FROM grants WHERE worker_id = $1 AND revoked_at IS NULL ORDER BY granted_at FOR UPDATE`, worker)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (grantRow, error) {
		var g grantRow
		err := r.Scan(&g.id, &g.system, &g.pkg, &g.connector, &g.role, &g.requestID, &g.entitlements)
		return g, err
	})
}

// converge makes the worker's grants match their role: packages the role lacks are revoked
// at once (movers never stack access), auto-approvable packages are granted, the rest become
// pending requests.
func (s *Service) converge(ctx context.Context, tx pgx.Tx, w *eventsv1.Worker) ([]events.Event, error) {
	if w.GetStatus() == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		return nil, nil
	}
	pol := s.policy.Load()
	want := map[string]Package{}
	for _, pk := range pol.PackagesFor(w.GetJobCode()) {
		want[pk.Name] = pk
	}
	held, err := activeGrants(ctx, tx, w.GetWorkerId())
	if err != nil {
		return nil, err
	}
	var out []events.Event
	have := map[string]bool{}
	for _, g := range held {
		if _, ok := want[g.pkg]; ok {
			have[g.pkg] = true
			continue
		}
		ev, err := s.revoke(ctx, tx, w.GetWorkerId(), g, "role change: "+w.GetJobCode()+" does not include "+g.pkg)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	// Pending requests for packages the role no longer includes are cancelled.
	if _, err := tx.Exec(ctx, `UPDATE requests SET status = 'cancelled', closed_at = now(), reason = 'role change'
		WHERE worker_id = $1 AND status = 'pending' AND NOT (package = ANY($2))`, w.GetWorkerId(), keys(want)); err != nil {
		return nil, err
	}
	for _, pk := range pol.PackagesFor(w.GetJobCode()) {
		if have[pk.Name] {
			continue
		}
		sys, _ := pol.System(pk.System)
		if !pk.AutoApprove || sys.HoldsEPHI || pk.Elevated {
			// Default deny: a request waits for its approvers.
			if _, err := tx.Exec(ctx, `INSERT INTO requests (request_id, worker_id, package, role, status, reason)
				VALUES ($1, $2, $3, $4, 'pending', 'role ' || $4) ON CONFLICT DO NOTHING`,
				events.NewID(), w.GetWorkerId(), pk.Name, w.GetJobCode()); err != nil {
				return nil, err
			}
			continue
		}
		ev, err := s.grant(ctx, tx, w.GetWorkerId(), pk, sys, w.GetJobCode(), pol.Hash)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

func keys(m map[string]Package) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func (s *Service) grant(ctx context.Context, tx pgx.Tx, worker string, pk Package, sys System, role, policyHash string) (events.Event, error) {
	now := time.Now().UTC()
	approvals := []*eventsv1.Approval{{Stage: "policy", Approver: "policy:" + policyHash[:12], DecidedAt: timestamppb.New(now), Automatic: true,
		Comment: "birthright package on a system without ePHI"}}
	aj, _ := json.Marshal([]map[string]any{{"stage": "policy", "approver": "policy:" + policyHash[:12], "decided_at": now, "automatic": true, "comment": approvals[0].Comment}})
	id := events.NewID()
	if _, err := tx.Exec(ctx, `INSERT INTO grants (grant_id, worker_id, system, package, connector, entitlements, role, approvals, policy_hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, id, worker, sys.Name, pk.Name, sys.Connector, pk.Entitlements, role, aj, policyHash); err != nil {
		return events.Event{}, err
	}
	return events.Event{
		ID: events.NewID(), Subject: events.Subject("tenure.access", "grant", worker), Source: source, WorkerID: worker, Actor: "policy", Time: now,
		Payload: &eventsv1.AccessDecision{
			Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT, WorkerId: worker, GrantId: id, System: sys.Name,
			Package: pk.Name, Connector: sys.Connector, Entitlements: pk.Entitlements, Reason: "role " + role,
			Approvals: approvals, DecidedAt: timestamppb.New(now), Role: role,
			Elevated: pk.Elevated, HoldsEphi: sys.HoldsEPHI, PolicyHash: policyHash,
		},
	}, nil
}

func (s *Service) revoke(ctx context.Context, tx pgx.Tx, worker string, g grantRow, reason string) (events.Event, error) {
	now := time.Now().UTC()
	if _, err := tx.Exec(ctx, "UPDATE grants SET revoked_at = $2, revoke_reason = $3 WHERE grant_id = $1", g.id, now, reason); err != nil {
		return events.Event{}, err
	}
	return events.Event{
		ID: events.NewID(), Subject: events.Subject("tenure.access", "revoke", worker), Source: source, WorkerID: worker, Actor: "policy", Time: now,
		Payload: &eventsv1.AccessDecision{
			Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, WorkerId: worker, GrantId: g.id, System: g.system,
			Package: g.pkg, Connector: g.connector, Entitlements: g.entitlements, Reason: reason, DecidedAt: timestamppb.New(now), Role: g.role,
		},
	}, nil
}

// revokeAll ends every grant and cancels every pending request: a leaver needs no approval.
func (s *Service) revokeAll(ctx context.Context, tx pgx.Tx, worker, reason string) ([]events.Event, error) {
	held, err := activeGrants(ctx, tx, worker)
	if err != nil {
		return nil, err
	}
	var out []events.Event
	for _, g := range held {
		ev, err := s.revoke(ctx, tx, worker, g, reason)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	_, err = tx.Exec(ctx, `UPDATE requests SET status = 'cancelled', closed_at = now(), reason = $2 WHERE worker_id = $1 AND status = 'pending'`, worker, reason)
	return out, err
}
