// Package approval decides who may have what. It turns HR lifecycle events into access
// decisions from the policy: default deny, auto-approval only for birthright packages on
// systems without ePHI, approvals by the people the policy names, movers lose what the new
// role lacks, leavers lose everything. It also runs time-boxed (JIT) grants, break-glass with
// post-use reviews, separation-of-duties rules, third-party rules (sponsor, BAA, end date) and
// access review campaigns that close on the provisioner's confirmation. Every decision goes
// out as tenure.access.<grant|revoke>.<worker> through the outbox; docs/governance.md.
package approval

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
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
	// Policy is the policy to start with. If nil, it is read from PolicyFile.
	Policy *Policy
	// PolicyFile, when set, is watched: a changed file that validates replaces the policy
	// without a restart (an invalid one is logged and ignored); each new version's hash is
	// published on tenure.access.policy_loaded for the ledger.
	PolicyFile string
	// PolicyPoll is how often PolicyFile is checked (default 5s).
	PolicyPoll time.Duration
	// Tick is how often stored deadlines are checked: JIT and break-glass expiry,
	// re-approval windows, overdue break-glass reviews, review deadlines and cadence
	// (default 5s). Deadlines live in PostgreSQL, so they survive restarts.
	Tick time.Duration
	// Connectors, when set, are the connectors that carry the policy out (the connectors
	// file): the policy at start and every reloaded version must fit them
	// (Policy.CheckConnectors), or the start fails and the reload is ignored.
	Connectors []connector.Config
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

// Service is the approval service.
type Service struct {
	approvalv1.UnimplementedGovernanceServiceServer
	cfg      Config
	pool     *pgxpool.Pool
	relay    *pgstore.Relay
	consumer *natsx.Consumer
	log      *slog.Logger
	policy   atomic.Pointer[Policy]
}

// New migrates the schema, records the policy version and creates the consumer.
func New(ctx context.Context, cfg Config, d Deps) (*Service, error) {
	if cfg.Policy == nil && cfg.PolicyFile != "" {
		p, err := LoadPolicy(cfg.PolicyFile)
		if err != nil {
			return nil, err
		}
		cfg.Policy = p
	}
	if cfg.Policy == nil {
		return nil, errors.New("approval: a policy is required")
	}
	if cfg.Connectors != nil {
		if err := cfg.Policy.CheckConnectors(cfg.Connectors); err != nil {
			return nil, err
		}
	}
	if cfg.PolicyPoll == 0 {
		cfg.PolicyPoll = 5 * time.Second
	}
	if cfg.Tick == 0 {
		cfg.Tick = 5 * time.Second
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if err := pgstore.Migrate(ctx, d.Pool, schema, migrations, "migrations"); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, pool: d.Pool, log: d.Log.With("service", "approval"), relay: pgstore.NewRelay(d.Pool, d.JS, d.Log)}
	s.relay.PublishInAtomicBatches(d.AtomicBatch)
	if err := s.SetPolicy(ctx, cfg.Policy); err != nil {
		return nil, fmt.Errorf("record policy: %w", err)
	}
	c, err := natsx.NewConsumer(ctx, d.JS, natsx.ConsumerSpec{
		Durable:        durable,
		FilterSubjects: []string{"tenure.hr.>", "tenure.result.>"},
	}, s.handle, s.log)
	if err != nil {
		return nil, err
	}
	s.consumer = c
	return s, nil
}

// Run handles HR events and provisioner results, watches the policy file and stored
// deadlines, and publishes decisions until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	errc := make(chan error, 4)
	go func() { errc <- s.relay.Run(ctx) }()
	go func() { errc <- s.consumer.Run(ctx) }()
	go func() { errc <- s.watchPolicy(ctx) }()
	go func() { errc <- s.runTicker(ctx) }()
	return errors.Join(<-errc, <-errc, <-errc, <-errc)
}

// RegisterGRPC registers GovernanceService.
func (s *Service) RegisterGRPC(g *grpc.Server) { approvalv1.RegisterGovernanceServiceServer(g, s) }

// AuthRules are the roles allowed per method. Approve, Deny and DecideReview further check
// that the caller is the approver the policy names for that stage or item.
func (s *Service) AuthRules() authn.Rules {
	read := []authn.Role{authn.RoleOperator, authn.RoleApprover, authn.RoleAuditor, authn.RoleSecurity}
	decide := []authn.Role{authn.RoleApprover, authn.RoleSecurity}
	act := []authn.Role{authn.RoleOperator, authn.RoleApprover, authn.RoleSecurity}
	return authn.Rules{
		approvalv1.GovernanceService_ListGrants_FullMethodName:            read,
		approvalv1.GovernanceService_ListRequests_FullMethodName:          read,
		approvalv1.GovernanceService_GetRequest_FullMethodName:            read,
		approvalv1.GovernanceService_ExplainAccess_FullMethodName:         read,
		approvalv1.GovernanceService_ListBreakGlass_FullMethodName:        read,
		approvalv1.GovernanceService_ListReviews_FullMethodName:           read,
		approvalv1.GovernanceService_GetReview_FullMethodName:             read,
		approvalv1.GovernanceService_GetPolicy_FullMethodName:             read,
		approvalv1.GovernanceService_Approve_FullMethodName:               decide,
		approvalv1.GovernanceService_Deny_FullMethodName:                  decide,
		approvalv1.GovernanceService_DecideReview_FullMethodName:          decide,
		approvalv1.GovernanceService_RequestAccess_FullMethodName:         act,
		approvalv1.GovernanceService_BreakGlass_FullMethodName:            act,
		approvalv1.GovernanceService_StartReview_FullMethodName:           {authn.RoleOperator, authn.RoleSecurity},
		approvalv1.GovernanceService_CloseBreakGlassReview_FullMethodName: {authn.RoleSecurity},
		approvalv1.GovernanceService_RecordBAA_FullMethodName:             {authn.RoleSecurity},
	}
}

// Policy returns the policy in force.
func (s *Service) Policy() *Policy { return s.policy.Load() }

// SetPolicy makes p the policy for new decisions and, if its hash differs from the last
// recorded version, records it and publishes tenure.access.policy_loaded for the ledger.
func (s *Service) SetPolicy(ctx context.Context, p *Policy) error {
	prev := s.policy.Swap(p)
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		var last string
		if err := tx.QueryRow(ctx, "SELECT policy_hash FROM policy_versions ORDER BY seq DESC LIMIT 1 FOR UPDATE").Scan(&last); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if last == p.Hash {
			return nil
		}
		if _, err := tx.Exec(ctx, "INSERT INTO policy_versions (policy_hash, path) VALUES ($1, $2)", p.Hash, p.Path); err != nil {
			return err
		}
		return pgstore.Enqueue(ctx, tx, events.Event{ID: "approval:policy:" + p.Hash + ":" + events.NewID(), Subject: "tenure.access.policy_loaded", Source: source, Actor: "policy",
			Payload: &eventsv1.PolicyLoaded{PolicyHash: p.Hash, Path: p.Path, LoadedAt: timestamppb.Now(), PreviousHash: last,
				Systems: int32(len(p.Systems)), Packages: int32(len(p.Packages)), Roles: int32(len(p.Roles))}})
	})
	if err != nil {
		if prev != nil {
			s.policy.Store(prev)
		}
		return err
	}
	s.relay.Poke()
	if prev != nil && prev.Hash != p.Hash {
		s.log.InfoContext(ctx, "policy loaded", "hash", p.Hash, "previous", prev.Hash, "path", p.Path)
	}
	return nil
}

// watchPolicy reloads PolicyFile when its content changes.
func (s *Service) watchPolicy(ctx context.Context) error {
	if s.cfg.PolicyFile == "" {
		return nil
	}
	t := time.NewTicker(s.cfg.PolicyPoll)
	defer t.Stop()
	badHash := ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b, err := os.ReadFile(s.cfg.PolicyFile)
		if err != nil {
			s.log.WarnContext(ctx, "read policy", "path", s.cfg.PolicyFile, "err", err)
			continue
		}
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		if h == s.policy.Load().Hash || h == badHash {
			continue
		}
		p, err := ParsePolicy(b)
		if err != nil {
			badHash = h
			s.log.ErrorContext(ctx, "changed policy is invalid; keeping the current one", "path", s.cfg.PolicyFile, "err", err)
			continue
		}
		p.Path = s.cfg.PolicyFile
		if s.cfg.Connectors != nil {
			if err := p.CheckConnectors(s.cfg.Connectors); err != nil {
				badHash = h
				s.log.ErrorContext(ctx, "changed policy does not fit the connectors; keeping the current one", "path", s.cfg.PolicyFile, "err", err)
				continue
			}
		}
		if err := s.SetPolicy(ctx, p); err != nil && ctx.Err() == nil {
			s.log.ErrorContext(ctx, "record policy", "err", err)
		}
	}
}

func (s *Service) handle(ctx context.Context, msg jetstream.Msg) error {
	if strings.HasPrefix(msg.Subject(), "tenure.result.") {
		return s.handleResult(ctx, msg)
	}
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
		var prevJob string
		err = tx.QueryRow(ctx, "SELECT effective_time, job_code FROM workers WHERE worker_id = $1 FOR UPDATE", w.GetWorkerId()).Scan(&stored, &prevJob)
		known := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if known && eff.Before(stored) {
			s.log.InfoContext(ctx, "ignoring stale HR event", "worker", w.GetWorkerId(), "event", meta.ID, "effective", eff, "applied", stored)
			return nil
		}
		var end *time.Time
		if d, err := time.Parse(time.DateOnly, w.GetEndDate()); err == nil {
			// The worker's access ends with the end date (end of that day, UTC).
			d = d.Add(24 * time.Hour)
			end = &d
		}
		if _, err := tx.Exec(ctx, `INSERT INTO workers (worker_id, status, job_code, effective_time, worker_type, manager_id, sponsor_id, vendor_org, end_date)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (worker_id) DO UPDATE SET status = $2, job_code = $3, effective_time = $4, worker_type = $5, manager_id = $6,
			  sponsor_id = $7, vendor_org = $8, end_date = $9, updated_at = now()`,
			w.GetWorkerId(), w.GetStatus().String(), w.GetJobCode(), eff, w.GetWorkerType().String(), w.GetManagerId(), w.GetSponsorId(), w.GetVendorOrg(), end); err != nil {
			return err
		}
		if end != nil {
			// Grants end no later than the worker's end date, also when HR moves it earlier.
			if _, err := tx.Exec(ctx, `UPDATE grants SET expires_at = $2 WHERE worker_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)`,
				w.GetWorkerId(), *end); err != nil {
				return err
			}
		}
		// Pending manager stages follow the worker's current manager (or sponsor).
		if mgr := firstNonEmpty(w.GetManagerId(), w.GetSponsorId()); mgr != "" {
			if _, err := tx.Exec(ctx, `UPDATE request_stages s SET approvers = ARRAY[$2] FROM requests r
				WHERE s.request_id = r.request_id AND r.worker_id = $1 AND r.status = 'pending' AND s.status = 'pending' AND s.stage = 'manager'`,
				w.GetWorkerId(), mgr); err != nil {
				return err
			}
		}
		var out []events.Event
		switch ev.GetKind() {
		case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER:
			out, err = s.revokeAll(ctx, tx, w.GetWorkerId(), "leaver: "+ev.GetHrEventType())
		case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER,
			eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_RESCIND:
			out, err = s.converge(ctx, tx, w.GetWorkerId(), known && prevJob != w.GetJobCode())
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

// handleResult takes a verified provisioner result as the confirmation of the revokes it
// reflects, and closes review campaigns whose revokes are now all confirmed.
func (s *Service) handleResult(ctx context.Context, msg jetstream.Msg) error {
	var r eventsv1.ProvisionResult
	if err := proto.Unmarshal(msg.Data(), &r); err != nil {
		return natsx.Permanent(fmt.Errorf("decode %s: %w", msg.Subject(), err))
	}
	if err := s.recordObserved(ctx, &r); err != nil {
		return err
	}
	if r.GetOutcome() != eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED || len(r.GetRevokedGrantIds()) == 0 {
		return nil
	}
	meta := events.MetaOf(msg.Headers())
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		first, err := pgstore.Claim(ctx, tx, durable, meta.ID, msg.Subject())
		if err != nil || !first {
			return err
		}
		rows, err := tx.Query(ctx, `UPDATE grants SET revoke_confirmed_at = $2
			WHERE grant_id = ANY($1) AND revoked_at IS NOT NULL AND revoke_confirmed_at IS NULL RETURNING grant_id`, r.GetRevokedGrantIds(), r.GetCompletedAt().AsTime())
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(ids) == 0 {
			return err
		}
		out, err := s.closeCampaigns(ctx, tx, ids)
		if err != nil {
			return err
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err == nil {
		s.relay.Poke()
	}
	return err
}

// recordObserved keeps what a result read back from the target, for ExplainAccess. Results
// may arrive out of order or twice: the newest read-back wins.
func (s *Service) recordObserved(ctx context.Context, r *eventsv1.ProvisionResult) error {
	if r.GetObservedState() == eventsv1.AccountState_ACCOUNT_STATE_UNSPECIFIED || r.GetWorkerId() == "" || r.GetUsername() == "" {
		return nil
	}
	outcome := strings.ToLower(strings.TrimPrefix(r.GetOutcome().String(), "PROVISION_OUTCOME_"))
	ents := r.GetEntitlements()
	if ents == nil {
		ents = []string{}
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO observed_accounts (worker_id, connector, username, state, entitlements, outcome, error, observed_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (worker_id, connector, username) DO UPDATE SET state = excluded.state, entitlements = excluded.entitlements, outcome = excluded.outcome,
		  error = excluded.error, observed_at = excluded.observed_at
		WHERE observed_accounts.observed_at <= excluded.observed_at`,
		r.GetWorkerId(), r.GetConnector(), r.GetUsername(), r.GetObservedState().String(), ents, outcome, r.GetError(), r.GetCompletedAt().AsTime())
	return err
}

type workerRow struct {
	id, status, jobCode, workerType, manager, sponsor, vendor string
	end                                                       *time.Time
}

// thirdParty says whether the worker is a contractor or vendor staff (needs a sponsor).
func (w workerRow) thirdParty() bool {
	return w.workerType == eventsv1.WorkerType_WORKER_TYPE_CONTRACTOR.String() || w.workerType == eventsv1.WorkerType_WORKER_TYPE_VENDOR.String() || w.vendor != ""
}

func loadWorker(ctx context.Context, q pgxQuerier, id string) (workerRow, error) {
	w := workerRow{id: id}
	err := q.QueryRow(ctx, `SELECT status, job_code, worker_type, manager_id, sponsor_id, vendor_org, end_date::timestamptz FROM workers WHERE worker_id = $1`, id).
		Scan(&w.status, &w.jobCode, &w.workerType, &w.manager, &w.sponsor, &w.vendor, &w.end)
	return w, err
}

type pgxQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

type grantRow struct {
	id, system, pkg, connector, role, requestID, kind string
	entitlements                                      []string
	reapproveBy                                       *time.Time
	sodException                                      string
}

func activeGrants(ctx context.Context, tx pgx.Tx, worker string) ([]grantRow, error) {
	rows, err := tx.Query(ctx, `SELECT grant_id, system, package, connector, role, request_id, kind, entitlements, reapprove_by, sod_exception
		FROM grants WHERE worker_id = $1 AND revoked_at IS NULL ORDER BY granted_at FOR UPDATE`, worker)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (grantRow, error) {
		var g grantRow
		err := r.Scan(&g.id, &g.system, &g.pkg, &g.connector, &g.role, &g.requestID, &g.kind, &g.entitlements, &g.reapproveBy, &g.sodException)
		return g, err
	})
}

// converge makes the worker's grants match their role: role packages the role lacks are
// revoked at once (movers never stack access), grants the worker holds outside the new role
// need re-approval within the policy window, auto-approvable packages are granted and the
// rest become pending requests (default deny).
func (s *Service) converge(ctx context.Context, tx pgx.Tx, worker string, jobChanged bool) ([]events.Event, error) {
	w, err := loadWorker(ctx, tx, worker)
	if err != nil {
		return nil, err
	}
	if w.status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() {
		return nil, nil
	}
	pol := s.policy.Load()
	want := map[string]Package{}
	for _, pk := range pol.PackagesFor(w.jobCode) {
		want[pk.Name] = pk
	}
	held, err := activeGrants(ctx, tx, worker)
	if err != nil {
		return nil, err
	}
	var out []events.Event
	// Pending role requests for packages the role no longer includes are cancelled first: a
	// grant of such a package held outside the role (JIT) is then asked to be re-approved,
	// not lost to the pending request as a duplicate.
	rows, err := tx.Query(ctx, `UPDATE requests SET status = 'cancelled', closed_at = now(), reason = 'role change'
		WHERE worker_id = $1 AND status IN ('pending', 'refused') AND kind = 'role' AND NOT (package = ANY($2)) RETURNING request_id, package, system`, worker, keys(want))
	if err != nil {
		return nil, err
	}
	cancelled, err := collectCancelled(rows)
	if err != nil {
		return nil, err
	}
	for _, c := range cancelled {
		out = append(out, requestEvent(c[0], worker, c[1], c[2], "cancelled", "role change"))
	}
	have := map[string]bool{}
	now := time.Now().UTC()
	for _, g := range held {
		// An SoD exception was approved for the role the worker had: a job change asks for it
		// again (the re-approval carries the SoD stage while the conflict stands), even when
		// the new role includes the package.
		travels := jobChanged && g.sodException != "" && (g.kind == kindRequest || g.kind == kindJIT)
		if _, ok := want[g.pkg]; ok && !travels {
			// A role package held only for a while (JIT, break-glass) is still requested, so
			// the worker keeps it once approved; the approved grant replaces the short one.
			if g.kind == kindRole || g.kind == kindRequest {
				have[g.pkg] = true
			}
			continue
		} else if ok {
			have[g.pkg] = true // kept (or lost) through the re-approval, not requested twice
		}
		switch g.kind {
		case kindRole:
			ev, err := s.revoke(ctx, tx, worker, g, "role change: "+w.jobCode+" does not include "+g.pkg, "policy")
			if err != nil {
				return nil, err
			}
			out = append(out, ev)
		case kindRequest, kindJIT:
			if !jobChanged || g.reapproveBy != nil {
				continue
			}
			// Held outside the new role: re-approve within the window or lose it.
			by := now.Add(pol.Approval.ReapprovalWindow.D())
			if _, err := tx.Exec(ctx, "UPDATE grants SET reapprove_by = $2 WHERE grant_id = $1", g.id, by); err != nil {
				return nil, err
			}
			pk, ok := pol.Package(g.pkg)
			if !ok {
				ev, err := s.revoke(ctx, tx, worker, g, "package "+g.pkg+" is no longer in the policy", "policy")
				if err != nil {
					return nil, err
				}
				out = append(out, ev)
				continue
			}
			why := "held outside the role"
			if g.sodException != "" {
				why = "held under an SoD exception (" + g.sodException + ")"
			}
			nr := newRequest{kind: kindReapproval, requestedBy: "policy", grantID: g.id,
				justification: fmt.Sprintf("job change to %s: %s; re-approve by %s or it is revoked", w.jobCode, why, by.Format(time.RFC3339))}
			if rule, _, bad := pol.Conflicts(otherPackages(held, g.id), g.pkg); bad {
				nr.sodRule = rule.Name // the exception is asked for again
			}
			_, evs, err := s.createRequest(ctx, tx, pol, w, pk, nr)
			var ref *refusal
			if errors.As(err, &ref) {
				// Not re-approvable now: the window runs out and the grant is revoked.
				evs, err = s.recordRefused(ctx, tx, w, pk, nr, ref)
			}
			if err != nil && !errors.Is(err, errDuplicateRequest) {
				return nil, err
			}
			out = append(out, evs...)
		}
	}
	if w.thirdParty() && w.sponsor == "" {
		// Contractors and vendor staff need a sponsor before anything is granted or requested.
		s.log.WarnContext(ctx, "third-party worker without a sponsor: nothing granted", "worker", worker)
		return out, nil
	}
	for _, pk := range pol.PackagesFor(w.jobCode) {
		if have[pk.Name] {
			continue
		}
		if !pol.AutoApprovable(pk) {
			// Default deny: a request waits for its approvers.
			nr := newRequest{kind: kindRole, role: w.jobCode, requestedBy: "policy", justification: "role " + w.jobCode}
			if ref := s.sodRefusal(ctx, tx, pol, w, pk); ref != nil {
				evs, err := s.recordRefused(ctx, tx, w, pk, nr, ref)
				if err != nil {
					return nil, err
				}
				out = append(out, evs...)
				continue
			}
			_, evs, err := s.createRequest(ctx, tx, pol, w, pk, nr)
			if errors.Is(err, errDuplicateRequest) {
				continue
			}
			var ref *refusal
			if errors.As(err, &ref) {
				s.log.WarnContext(ctx, "role package refused", "worker", worker, "package", pk.Name, "reason", ref.msg)
				evs, err := s.recordRefused(ctx, tx, w, pk, nr, ref)
				if err != nil {
					return nil, err
				}
				out = append(out, evs...)
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, evs...)
			continue
		}
		if ref := s.refuse(ctx, tx, pol, w, pk); ref != nil {
			s.log.WarnContext(ctx, "auto-approval refused", "worker", worker, "package", pk.Name, "reason", ref.msg)
			evs, err := s.recordRefused(ctx, tx, w, pk, newRequest{kind: kindRole, role: w.jobCode, requestedBy: "policy", justification: "role " + w.jobCode}, ref)
			if err != nil {
				return nil, err
			}
			out = append(out, evs...)
			continue
		}
		ev, err := s.grant(ctx, tx, pol, w, pk, grantSpec{kind: kindRole, role: w.jobCode, actor: "policy", reason: "role " + w.jobCode,
			approvals: []*eventsv1.Approval{{Stage: "policy", Approver: "policy:" + pol.Hash[:12], DecidedAt: timestamppb.New(now), Automatic: true,
				Comment: "birthright package on a system without ePHI"}}})
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// otherPackages are the packages of the grants held besides grant id.
func otherPackages(held []grantRow, id string) []string {
	var out []string
	for _, g := range held {
		if g.id != id {
			out = append(out, g.pkg)
		}
	}
	return out
}

func collectCancelled(rows pgx.Rows) ([][3]string, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([3]string, error) {
		var x [3]string
		return x, r.Scan(&x[0], &x[1], &x[2])
	})
}

func keys(m map[string]Package) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Grant and request kinds.
const (
	kindRole       = "role"
	kindRequest    = "request"
	kindJIT        = "jit"
	kindBreakGlass = "breakglass"
	kindReapproval = "reapproval"
)

type grantSpec struct {
	kind, role, requestID, actor, reason, sodException string
	approvals                                          []*eventsv1.Approval
	expires                                            *time.Time
}

// refuse returns why the worker may not hold pkg at all (third-party rules), or nil.
func (s *Service) refuse(ctx context.Context, q pgxQuerier, pol *Policy, w workerRow, pk Package) *refusal {
	if w.thirdParty() && w.sponsor == "" {
		return &refusal{fmt.Sprintf("worker %s is a %s without a sponsor", w.id, strings.ToLower(strings.TrimPrefix(w.workerType, "WORKER_TYPE_"))), ruleSponsor}
	}
	sys, _ := pol.System(pk.System)
	if w.vendor != "" && (sys.HoldsEPHI || sys.BAARequired) && !s.hasBAA(ctx, q, pol, w.vendor) {
		return &refusal{fmt.Sprintf("vendor organisation %q has no business associate agreement on file; %s needs one", w.vendor, pk.System), ruleBAA}
	}
	if w.end != nil && !w.end.After(time.Now()) {
		return &refusal{fmt.Sprintf("worker %s's end date has passed", w.id), ruleEndDate}
	}
	return nil
}

func (s *Service) hasBAA(ctx context.Context, q pgxQuerier, pol *Policy, org string) bool {
	if pol.VendorBAA(org) {
		return true
	}
	var n int
	q.QueryRow(ctx, "SELECT count(*) FROM vendor_baas WHERE vendor_org = $1 AND (expires_at IS NULL OR expires_at > now())", org).Scan(&n)
	return n > 0
}

func (s *Service) grant(ctx context.Context, tx pgx.Tx, pol *Policy, w workerRow, pk Package, g grantSpec) (events.Event, error) {
	now := time.Now().UTC()
	sys, _ := pol.System(pk.System)
	expires := g.expires
	if w.end != nil && (expires == nil || w.end.Before(*expires)) {
		// Grants end no later than the worker's end date.
		expires = w.end
	}
	aj, _ := json.Marshal(approvalsJSON(g.approvals))
	id := events.NewID()
	// A package may grant the account alone, with no entitlements: store an empty list, not NULL.
	ents := pk.Entitlements
	if ents == nil {
		ents = []string{}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO grants (grant_id, worker_id, system, package, connector, entitlements, role, request_id, approvals, policy_hash, kind, expires_at, sod_exception)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`, id, w.id, sys.Name, pk.Name, sys.Connector, ents, g.role, g.requestID, aj, pol.Hash,
		g.kind, expires, g.sodException); err != nil {
		return events.Event{}, err
	}
	d := &eventsv1.AccessDecision{
		DecisionId: events.NewID(), Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT, WorkerId: w.id, GrantId: id, System: sys.Name,
		Package: pk.Name, Connector: sys.Connector, Entitlements: pk.Entitlements, Reason: g.reason, RequestId: g.requestID,
		Approvals: g.approvals, DecidedAt: timestamppb.New(now), Role: g.role,
		Elevated: pk.Elevated, HoldsEphi: sys.HoldsEPHI, PolicyHash: pol.Hash,
	}
	if expires != nil {
		d.ExpiresAt = timestamppb.New(*expires)
	}
	return events.Event{ID: d.DecisionId, Subject: events.Subject("tenure.access", "grant", w.id), Source: source, WorkerID: w.id, Actor: g.actor, Time: now, Payload: d}, nil
}

type approvalJSON struct {
	Stage     string    `json:"stage"`
	Approver  string    `json:"approver"`
	DecidedAt time.Time `json:"decided_at"`
	Comment   string    `json:"comment"`
	Automatic bool      `json:"automatic"`
}

func approvalsJSON(as []*eventsv1.Approval) []approvalJSON {
	out := []approvalJSON{}
	for _, a := range as {
		out = append(out, approvalJSON{Stage: a.Stage, Approver: a.Approver, DecidedAt: a.DecidedAt.AsTime(), Comment: a.Comment, Automatic: a.Automatic})
	}
	return out
}

func (s *Service) revoke(ctx context.Context, tx pgx.Tx, worker string, g grantRow, reason, actor string) (events.Event, error) {
	now := time.Now().UTC()
	if _, err := tx.Exec(ctx, "UPDATE grants SET revoked_at = $2, revoke_reason = $3 WHERE grant_id = $1", g.id, now, reason); err != nil {
		return events.Event{}, err
	}
	// A pending re-approval of the grant has nothing left to decide.
	if _, err := tx.Exec(ctx, `UPDATE requests SET status = 'cancelled', closed_at = now(), reason = 'grant revoked: ' || $2
		WHERE grant_id = $1 AND status = 'pending'`, g.id, reason); err != nil {
		return events.Event{}, err
	}
	id := events.NewID()
	return events.Event{
		ID: id, Subject: events.Subject("tenure.access", "revoke", worker), Source: source, WorkerID: worker, Actor: actor, Time: now,
		Payload: &eventsv1.AccessDecision{
			DecisionId: id, Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, WorkerId: worker, GrantId: g.id, System: g.system,
			Package: g.pkg, Connector: g.connector, Entitlements: g.entitlements, Reason: reason, DecidedAt: timestamppb.New(now), Role: g.role, RequestId: g.requestID,
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
		ev, err := s.revoke(ctx, tx, worker, g, reason, "policy")
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	rows, err := tx.Query(ctx, `UPDATE requests SET status = 'cancelled', closed_at = now(), reason = $2 WHERE worker_id = $1 AND status IN ('pending', 'refused')
		RETURNING request_id, package, system`, worker, reason)
	if err != nil {
		return nil, err
	}
	cancelled, err := collectCancelled(rows)
	for _, c := range cancelled {
		out = append(out, requestEvent(c[0], worker, c[1], c[2], "cancelled", reason))
	}
	return out, err
}

func requestEvent(id, worker, pkg, system, status, reason string) events.Event {
	return events.Event{ID: events.NewID(), Subject: events.Subject("tenure.access", "request_"+status, worker), Source: source, WorkerID: worker, Actor: "policy",
		Payload: &eventsv1.RequestEvent{RequestId: id, WorkerId: worker, Package: pkg, System: system, Status: status, Reason: reason, At: timestamppb.Now()}}
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
