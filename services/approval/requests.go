package approval

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// securityApprover in a stage's approvers means any principal with the security role.
const securityApprover = "role:security"

var errDuplicateRequest = errors.New("a request for this package is already pending")

// refusal is a request that policy refuses outright (SoD, BAA, sponsor, end date): msg says
// why, rule which kind of rule (what, when it changes, evaluates the request again).
type refusal struct{ msg, rule string }

func (r *refusal) Error() string { return r.msg }

// Refusal rules.
const (
	ruleBAA     = "baa"
	ruleSoD     = "sod"
	ruleSponsor = "sponsor"
	ruleEndDate = "end_date"
)

type newRequest struct {
	kind, role, requestedBy, justification, grantID, sodRule string
	end                                                      *time.Time
	// duration of a JIT grant, counted from the grant.
	duration time.Duration
}

// sodRefusal is the SoD rule that refuses pk to w given what w holds, when no exception is
// asked for; nil when none.
func (s *Service) sodRefusal(ctx context.Context, tx pgx.Tx, pol *Policy, w workerRow, pk Package) *refusal {
	held, err := heldPackages(ctx, tx, w.id)
	if err != nil {
		return nil // the grant-time check (fulfil) refuses it then
	}
	if rule, other, bad := pol.Conflicts(held, pk.Name); bad {
		return &refusal{fmt.Sprintf("refused by SoD rule %s: %s conflicts with %s, which %s holds (%s); ask for a security exception with sod_exception",
			rule.Name, pk.Name, other, w.id, rule.Reason), ruleSoD}
	}
	return nil
}

// recordRefused keeps a request that policy refuses outright, in status refused with the
// reason, and tells the ledger (tenure.access.request_refused). One refused request per
// worker and package stays open: a repeated refusal updates its reason and says nothing new.
// It is evaluated again when its rule changes (RecordBAA, a request for an SoD exception,
// a role change) and any request created for the package closes it (createRequest).
func (s *Service) recordRefused(ctx context.Context, tx pgx.Tx, w workerRow, pk Package, r newRequest, ref *refusal) ([]events.Event, error) {
	var id string
	var inserted bool
	err := tx.QueryRow(ctx, `INSERT INTO requests (request_id, worker_id, package, role, status, reason, kind, system, requested_by, justification, end_time, grant_id,
		  sod_rule, closed_at, refused_rule, duration_seconds)
		VALUES ($1, $2, $3, $4, 'refused', $5, $6, $7, $8, $9, $10, $11, $12, now(), $13, $14)
		ON CONFLICT (worker_id, package) WHERE status = 'refused' DO UPDATE SET reason = excluded.reason, refused_rule = excluded.refused_rule
		RETURNING request_id, xmax = 0`,
		events.NewID(), w.id, pk.Name, r.role, ref.msg, r.kind, pk.System, r.requestedBy, r.justification, r.end, r.grantID, r.sodRule, ref.rule,
		int64(r.duration/time.Second)).Scan(&id, &inserted)
	if err != nil || !inserted {
		return nil, err
	}
	ev := requestEvent(id, w.id, pk.Name, pk.System, "refused", ref.msg)
	p := ev.Payload.(*eventsv1.RequestEvent)
	p.Kind, p.RequestedBy, p.Justification = r.kind, r.requestedBy, r.justification
	return []events.Event{ev}, nil
}

// reevaluateRefused evaluates again the refused requests of a worker whose rule is one of
// rules (a BAA was recorded): each is cancelled as re-evaluated, and asked for again, a role
// package through converge. What policy still refuses is refused again, with today's reason.
func (s *Service) reevaluateRefused(ctx context.Context, tx pgx.Tx, worker, why string, rules ...string) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `UPDATE requests SET status = 'cancelled', reason = 're-evaluated: ' || $3
		WHERE worker_id = $1 AND status = 'refused' AND refused_rule = ANY($2)
		RETURNING request_id, package, system, kind, role, requested_by, justification, end_time, grant_id, sod_rule, duration_seconds`, worker, rules, why)
	if err != nil {
		return nil, err
	}
	type old struct {
		id, pkg, system, kind, role, by, just, grant, sod string
		end                                               *time.Time
		secs                                              int64
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (old, error) {
		var o old
		return o, r.Scan(&o.id, &o.pkg, &o.system, &o.kind, &o.role, &o.by, &o.just, &o.end, &o.grant, &o.sod, &o.secs)
	})
	if err != nil || len(list) == 0 {
		return nil, err
	}
	pol := s.policy.Load()
	w, err := loadWorker(ctx, tx, worker)
	if err != nil {
		return nil, err
	}
	var out []events.Event
	role := false
	for _, o := range list {
		out = append(out, requestEvent(o.id, worker, o.pkg, o.system, "cancelled", "re-evaluated: "+why))
		if o.kind == kindRole {
			role = true
			continue
		}
		pk, ok := pol.Package(o.pkg)
		if !ok || (o.end != nil && !o.end.After(time.Now())) || w.status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() {
			continue
		}
		nr := newRequest{kind: o.kind, role: o.role, requestedBy: o.by, justification: o.just, end: o.end, grantID: o.grant, sodRule: o.sod, duration: time.Duration(o.secs) * time.Second}
		_, evs, err := s.createRequest(ctx, tx, pol, w, pk, nr)
		var ref *refusal
		if errors.As(err, &ref) {
			evs, err = s.recordRefused(ctx, tx, w, pk, nr, ref)
		}
		if err != nil && !errors.Is(err, errDuplicateRequest) {
			return nil, err
		}
		out = append(out, evs...)
	}
	if role {
		evs, err := s.converge(ctx, tx, worker, false)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

// stageApprovers is who may decide a stage for worker w on system sys.
func stageApprovers(stage string, w workerRow, sys System) []string {
	switch stage {
	case StageManager:
		if w.manager != "" {
			return []string{w.manager}
		}
		if w.sponsor != "" {
			// A contractor's or vendor's sponsor answers for them.
			return []string{w.sponsor}
		}
		// Nobody to ask: security decides rather than nobody.
		return []string{securityApprover}
	case StageOwner:
		return append([]string{sys.Owner}, sys.Approvers...)
	}
	return []string{securityApprover}
}

// createRequest records a pending request and its stages. Policy refusals come back as
// *refusal; a pending duplicate as errDuplicateRequest.
func (s *Service) createRequest(ctx context.Context, tx pgx.Tx, pol *Policy, w workerRow, pk Package, r newRequest) (string, []events.Event, error) {
	if ref := s.refuse(ctx, tx, pol, w, pk); ref != nil {
		return "", nil, ref
	}
	sys, _ := pol.System(pk.System)
	stages := pol.StagesFor(pk)
	if r.sodRule != "" {
		stages = append(stages, StageSoD)
	}
	id := events.NewID()
	tag, err := tx.Exec(ctx, `INSERT INTO requests (request_id, worker_id, package, role, status, reason, kind, system, requested_by, justification, end_time, grant_id,
		  sod_rule, duration_seconds)
		VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING`,
		id, w.id, pk.Name, r.role, r.justification, r.kind, sys.Name, r.requestedBy, r.justification, r.end, r.grantID, r.sodRule, int64(r.duration/time.Second))
	if err != nil {
		return "", nil, err
	}
	if tag.RowsAffected() == 0 {
		return "", nil, errDuplicateRequest
	}
	// A refused request for the package is answered by this one.
	rows, err := tx.Query(ctx, `UPDATE requests SET status = 'cancelled', reason = 're-evaluated: now request ' || $3
		WHERE worker_id = $1 AND package = $2 AND status = 'refused' RETURNING request_id, package, system`, w.id, pk.Name, id)
	if err != nil {
		return "", nil, err
	}
	superseded, err := collectCancelled(rows)
	if err != nil {
		return "", nil, err
	}
	var out []events.Event
	for _, c := range superseded {
		out = append(out, requestEvent(c[0], w.id, c[1], c[2], "cancelled", "re-evaluated: now request "+id))
	}
	for i, st := range stages {
		if _, err := tx.Exec(ctx, "INSERT INTO request_stages (request_id, seq, stage, approvers) VALUES ($1, $2, $3, $4)",
			id, i, st, stageApprovers(st, w, sys)); err != nil {
			return "", nil, err
		}
	}
	ev := requestEvent(id, w.id, pk.Name, sys.Name, "created", r.justification)
	p := ev.Payload.(*eventsv1.RequestEvent)
	p.Kind, p.RequestedBy, p.Justification = r.kind, r.requestedBy, r.justification
	ev.Actor = r.requestedBy
	return id, append(out, ev), nil
}

type stageRow struct {
	seq                      int
	stage, status, decidedBy string
	approvers                []string
	decidedAt                *time.Time
	comment                  string
}

type requestRow struct {
	id, worker, pkg, system, kind, status, role, requestedBy, justification, reason, grantID, sodRule string
	created                                                                                           time.Time
	closed, end                                                                                       *time.Time
	durationSecs                                                                                      int64
	stages                                                                                            []stageRow
}

func loadRequest(ctx context.Context, q pgxQuerier, id string, lock bool) (requestRow, error) {
	var r requestRow
	sql := `SELECT request_id, worker_id, package, system, kind, status, role, requested_by, justification, reason, grant_id, sod_rule, created_at, closed_at, end_time,
		  duration_seconds
		FROM requests WHERE request_id = $1`
	if lock {
		sql += " FOR UPDATE"
	}
	if err := q.QueryRow(ctx, sql, id).Scan(&r.id, &r.worker, &r.pkg, &r.system, &r.kind, &r.status, &r.role, &r.requestedBy, &r.justification, &r.reason,
		&r.grantID, &r.sodRule, &r.created, &r.closed, &r.end, &r.durationSecs); err != nil {
		return r, err
	}
	rows, err := q.Query(ctx, "SELECT seq, stage, status, decided_by, approvers, decided_at, comment FROM request_stages WHERE request_id = $1 ORDER BY seq", id)
	if err != nil {
		return r, err
	}
	r.stages, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (stageRow, error) {
		var st stageRow
		return st, row.Scan(&st.seq, &st.stage, &st.status, &st.decidedBy, &st.approvers, &st.decidedAt, &st.comment)
	})
	return r, err
}

func (r requestRow) current() (stageRow, bool) {
	for _, st := range r.stages {
		if st.status == "pending" {
			return st, true
		}
	}
	return stageRow{}, false
}

func (r requestRow) proto() *approvalv1.AccessRequest {
	out := &approvalv1.AccessRequest{RequestId: r.id, WorkerId: r.worker, Package: r.pkg, System: r.system, Kind: r.kind, Status: r.status, Role: r.role,
		RequestedBy: r.requestedBy, Justification: r.justification, CreatedAt: timestamppb.New(r.created), Reason: r.reason, GrantId: r.grantID, SodRule: r.sodRule,
		DurationSeconds: r.durationSecs}
	if r.closed != nil {
		out.ClosedAt = timestamppb.New(*r.closed)
	}
	if r.end != nil {
		out.EndTime = timestamppb.New(*r.end)
	}
	waiting := false
	for _, st := range r.stages {
		ps := &approvalv1.Stage{Stage: st.stage, Status: st.status, Approvers: st.approvers, DecidedBy: st.decidedBy, Comment: st.comment}
		if st.decidedAt != nil {
			ps.DecidedAt = timestamppb.New(*st.decidedAt)
		}
		if st.status == "pending" {
			if waiting || r.status != "pending" {
				ps.Status = "waiting"
			}
			waiting = true
		}
		out.Stages = append(out.Stages, ps)
	}
	return out
}

// mayDecide checks that the caller is the approver the policy names for the stage and is
// neither the worker nor the requester, nor someone who decided an earlier stage.
func mayDecide(p authn.Principal, who string, r requestRow, st stageRow) error {
	if who == r.worker {
		return status.Errorf(codes.PermissionDenied, "%s cannot decide a request for themselves", p.Name)
	}
	if who == r.requestedBy || p.Name == r.requestedBy {
		return status.Errorf(codes.PermissionDenied, "%s cannot decide their own request", p.Name)
	}
	for _, prev := range r.stages {
		if prev.status == "approved" && prev.decidedBy == who {
			return status.Errorf(codes.PermissionDenied, "%s already approved the %s stage; stage %s needs another person", who, prev.stage, st.stage)
		}
	}
	if slices.Contains(st.approvers, who) {
		return nil
	}
	if slices.Contains(st.approvers, securityApprover) && p.Has(authn.RoleSecurity) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "stage %s of request %s must be decided by %s, not %s", st.stage, r.id, strings.Join(st.approvers, " or "), who)
}

func (s *Service) caller(ctx context.Context) (authn.Principal, string, error) {
	p, ok := authn.FromContext(ctx)
	if !ok || p.Name == "" {
		return p, "", status.Error(codes.Unauthenticated, "no caller identity")
	}
	return p, s.policy.Load().Identity(p.Name), nil
}

// Approve completes the current stage of a request; after the last stage the grant is made.
func (s *Service) Approve(ctx context.Context, req *approvalv1.ApproveRequest) (*approvalv1.ApproveResponse, error) {
	r, err := s.decide(ctx, req.GetRequestId(), req.GetComment(), true)
	if err != nil {
		return nil, err
	}
	return &approvalv1.ApproveResponse{Request: r}, nil
}

// Deny ends a request at its current stage.
func (s *Service) Deny(ctx context.Context, req *approvalv1.DenyRequest) (*approvalv1.DenyResponse, error) {
	r, err := s.decide(ctx, req.GetRequestId(), req.GetComment(), false)
	if err != nil {
		return nil, err
	}
	return &approvalv1.DenyResponse{Request: r}, nil
}

func (s *Service) decide(ctx context.Context, id, comment string, approve bool) (*approvalv1.AccessRequest, error) {
	p, who, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "request_id is required")
	}
	var refused string
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := loadRequest(ctx, tx, id, true)
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "no request %s", id)
		}
		if err != nil {
			return err
		}
		if r.status != "pending" {
			return status.Errorf(codes.FailedPrecondition, "request %s is %s", id, r.status)
		}
		st, ok := r.current()
		if !ok {
			return status.Errorf(codes.FailedPrecondition, "request %s has no pending stage", id)
		}
		if err := mayDecide(p, who, r, st); err != nil {
			return err
		}
		now := time.Now().UTC()
		decision := "denied"
		if approve {
			decision = "approved"
		}
		if _, err := tx.Exec(ctx, "UPDATE request_stages SET status = $3, decided_by = $4, decided_at = $5, comment = $6 WHERE request_id = $1 AND seq = $2",
			id, st.seq, decision, who, now, comment); err != nil {
			return err
		}
		stageEv := events.Event{ID: events.NewID(), Subject: events.Subject("tenure.access", "request_stage_"+decision, r.worker), Source: source, WorkerID: r.worker, Actor: who,
			Payload: &eventsv1.RequestEvent{RequestId: id, WorkerId: r.worker, Package: r.pkg, System: r.system, Status: "stage_" + decision, Kind: r.kind,
				Approvals: []*eventsv1.Approval{{Stage: st.stage, Approver: who, DecidedAt: timestamppb.New(now), Comment: comment}}, At: timestamppb.New(now)}}
		out := []events.Event{stageEv}
		if !approve {
			evs, err := s.closeRequest(ctx, tx, r, "denied", fmt.Sprintf("denied at stage %s by %s: %s", st.stage, who, comment))
			if err != nil {
				return err
			}
			out = append(out, evs...)
			if r.kind == kindReapproval && r.grantID != "" {
				evs, err := s.revokeGrantID(ctx, tx, r.grantID, "re-approval denied by "+who, who)
				if err != nil {
					return err
				}
				out = append(out, evs...)
			}
			return pgstore.Enqueue(ctx, tx, out...)
		}
		r, err = loadRequest(ctx, tx, id, false)
		if err != nil {
			return err
		}
		if _, more := r.current(); !more {
			evs, msg, err := s.fulfil(ctx, tx, r)
			if err != nil {
				return err
			}
			refused = msg
			out = append(out, evs...)
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	s.relay.Poke()
	r, err := loadRequest(ctx, s.pool, id, false)
	if err != nil {
		return nil, grpcErr(err)
	}
	if refused != "" {
		return r.proto(), status.Error(codes.FailedPrecondition, refused)
	}
	return r.proto(), nil
}

func (s *Service) closeRequest(ctx context.Context, tx pgx.Tx, r requestRow, st, reason string) ([]events.Event, error) {
	if _, err := tx.Exec(ctx, "UPDATE requests SET status = $2, closed_at = now(), reason = $3 WHERE request_id = $1", r.id, st, reason); err != nil {
		return nil, err
	}
	return []events.Event{requestEvent(r.id, r.worker, r.pkg, r.system, st, reason)}, nil
}

// fulfil turns a fully approved request into a grant, after checking once more what policy
// refuses outright (the worker, vendor BAA or SoD may have changed while it waited).
func (s *Service) fulfil(ctx context.Context, tx pgx.Tx, r requestRow) ([]events.Event, string, error) {
	pol := s.policy.Load()
	var out []events.Event
	var approvals []*eventsv1.Approval
	sodException := ""
	for _, st := range r.stages {
		approvals = append(approvals, &eventsv1.Approval{Stage: st.stage, Approver: st.decidedBy, DecidedAt: timestamppb.New(*st.decidedAt), Comment: st.comment})
		if st.stage == StageSoD {
			sodException = fmt.Sprintf("%s approved by %s: %s", r.sodRule, st.decidedBy, st.comment)
		}
	}
	if r.kind == kindReapproval {
		// The grant keeps the exception this re-approval carries, or none: an exception
		// approved for another role never travels with it.
		var pkg string
		if err := tx.QueryRow(ctx, "SELECT package FROM grants WHERE grant_id = $1", r.grantID).Scan(&pkg); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, "", err
		}
		held, err := heldPackages(ctx, tx, r.worker)
		if err != nil {
			return nil, "", err
		}
		if i := slices.Index(held, pkg); i >= 0 {
			held = slices.Delete(held, i, i+1)
		}
		if rule, other, bad := pol.Conflicts(held, pkg); bad && sodException == "" {
			msg := fmt.Sprintf("refused by SoD rule %s: %s conflicts with %s, which %s holds; re-approval needs a security exception", rule.Name, pkg, other, r.worker)
			evs, err := s.refuseRequest(ctx, tx, r, msg, ruleSoD)
			if err != nil {
				return nil, "", err
			}
			more, err := s.revokeGrantID(ctx, tx, r.grantID, msg, "policy")
			return append(evs, more...), msg, err
		}
		if _, err := tx.Exec(ctx, "UPDATE grants SET reapprove_by = NULL, sod_exception = $2 WHERE grant_id = $1 AND revoked_at IS NULL", r.grantID, sodException); err != nil {
			return nil, "", err
		}
		evs, err := s.closeRequest(ctx, tx, r, "approved", "re-approved")
		return evs, "", err
	}
	w, err := loadWorker(ctx, tx, r.worker)
	if err != nil {
		return nil, "", err
	}
	pk, ok := pol.Package(r.pkg)
	if !ok {
		evs, err := s.closeRequest(ctx, tx, r, "denied", "package "+r.pkg+" is no longer in the policy")
		return evs, "package " + r.pkg + " is no longer in the policy", err
	}
	if w.status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() {
		msg := "worker " + w.id + " is terminated"
		evs, err := s.closeRequest(ctx, tx, r, "denied", msg)
		return evs, msg, err
	}
	ref := s.refuse(ctx, tx, pol, w, pk)
	if ref == nil && sodException == "" {
		held, err := heldPackages(ctx, tx, w.id)
		if err != nil {
			return nil, "", err
		}
		if rule, other, bad := pol.Conflicts(held, pk.Name); bad {
			ref = &refusal{fmt.Sprintf("refused by SoD rule %s: %s conflicts with %s, which %s holds", rule.Name, pk.Name, other, w.id), ruleSoD}
		}
	}
	if ref != nil {
		evs, err := s.refuseRequest(ctx, tx, r, ref.msg, ref.rule)
		return evs, ref.msg, err
	}
	kind := kindRequest
	switch {
	case r.kind == kindRole:
		kind = kindRole
	case r.durationSecs > 0:
		// JIT time counts from the grant, not from the request: the stages' time is not the
		// worker's.
		end := time.Now().UTC().Add(time.Duration(r.durationSecs) * time.Second)
		r.end, kind = &end, kindJIT
	case r.end != nil:
		kind = kindJIT
	}
	// A short grant of the same package (JIT, break-glass) is replaced by this one.
	var prev string
	if err := tx.QueryRow(ctx, "SELECT grant_id FROM grants WHERE worker_id = $1 AND package = $2 AND revoked_at IS NULL", w.id, pk.Name).Scan(&prev); err == nil {
		evs, err := s.revokeGrantID(ctx, tx, prev, "replaced by the grant of request "+r.id, "policy")
		if err != nil {
			return nil, "", err
		}
		out = append(out, evs...)
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return nil, "", err
	}
	ev, err := s.grant(ctx, tx, pol, w, pk, grantSpec{kind: kind, role: r.role, requestID: r.id, actor: r.stages[len(r.stages)-1].decidedBy,
		reason: r.justification, approvals: approvals, expires: r.end, sodException: sodException})
	if err != nil {
		return nil, "", err
	}
	gid := ev.Payload.(*eventsv1.AccessDecision).GrantId
	if _, err := tx.Exec(ctx, "UPDATE requests SET status = 'approved', closed_at = now(), grant_id = $2 WHERE request_id = $1", r.id, gid); err != nil {
		return nil, "", err
	}
	done := requestEvent(r.id, r.worker, r.pkg, r.system, "approved", "all stages approved")
	done.Payload.(*eventsv1.RequestEvent).Approvals = approvals
	return append(out, done, ev), "", nil
}

// refuseRequest closes a request that policy refuses at the grant, as refused with the rule,
// so it is evaluated again when the rule changes; an older refused request for the package
// gives way to it.
func (s *Service) refuseRequest(ctx context.Context, tx pgx.Tx, r requestRow, msg, rule string) ([]events.Event, error) {
	if _, err := tx.Exec(ctx, `UPDATE requests SET status = 'cancelled', reason = 're-evaluated: now request ' || $3
		WHERE worker_id = $1 AND package = $2 AND status = 'refused'`, r.worker, r.pkg, r.id); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "UPDATE requests SET refused_rule = $2 WHERE request_id = $1", r.id, rule); err != nil {
		return nil, err
	}
	return s.closeRequest(ctx, tx, r, "refused", msg)
}

func heldPackages(ctx context.Context, q pgxQuerier, worker string) ([]string, error) {
	rows, err := q.Query(ctx, "SELECT package FROM grants WHERE worker_id = $1 AND revoked_at IS NULL", worker)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (s *Service) revokeGrantID(ctx context.Context, tx pgx.Tx, grantID, reason, actor string) ([]events.Event, error) {
	var g grantRow
	var worker string
	err := tx.QueryRow(ctx, `SELECT grant_id, worker_id, system, package, connector, role, request_id, kind, entitlements FROM grants
		WHERE grant_id = $1 AND revoked_at IS NULL FOR UPDATE`, grantID).Scan(&g.id, &worker, &g.system, &g.pkg, &g.connector, &g.role, &g.requestID, &g.kind, &g.entitlements)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ev, err := s.revoke(ctx, tx, worker, g, reason, actor)
	return []events.Event{ev}, err
}

// RequestAccess asks for a package outside the worker's role, optionally time-boxed.
func (s *Service) RequestAccess(ctx context.Context, req *approvalv1.RequestAccessRequest) (*approvalv1.RequestAccessResponse, error) {
	_, who, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetWorkerId() == "" || req.GetPackage() == "" {
		return nil, status.Error(codes.InvalidArgument, "worker_id and package are required")
	}
	if strings.TrimSpace(req.GetJustification()) == "" {
		return nil, status.Error(codes.InvalidArgument, "a justification is required")
	}
	pol := s.policy.Load()
	pk, ok := pol.Package(req.GetPackage())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no package %q in policy %s", req.GetPackage(), pol.Hash[:12])
	}
	var end *time.Time
	var dur time.Duration
	kind := kindRequest
	if req.GetDurationSeconds() < 0 || (req.GetDurationSeconds() > 0 && req.GetEndTime() != nil) {
		return nil, status.Error(codes.InvalidArgument, "give end_time or a positive duration_seconds, not both")
	}
	if req.GetDurationSeconds() > 0 {
		dur, kind = time.Duration(req.GetDurationSeconds())*time.Second, kindJIT
		if max := pk.MaxDuration.D(); max > 0 && dur > max {
			return nil, status.Errorf(codes.InvalidArgument, "duration %s is longer than package %s allows (max_duration %s)", dur, pk.Name, max)
		}
	} else if req.GetEndTime() != nil {
		e := req.GetEndTime().AsTime()
		if !e.After(time.Now()) {
			return nil, status.Error(codes.InvalidArgument, "end_time must be in the future")
		}
		if max := pk.MaxDuration.D(); max > 0 && e.After(time.Now().Add(max)) {
			return nil, status.Errorf(codes.InvalidArgument, "end_time %s is later than package %s allows (max_duration %s)", e.Format(time.RFC3339), pk.Name, max)
		}
		end, kind = &e, kindJIT
	} else if pk.MaxDuration > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "package %s is time-boxed: give an end_time within %s", pk.Name, pk.MaxDuration.D())
	}
	var id, refused string
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		w, err := loadWorker(ctx, tx, req.GetWorkerId())
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "worker %s is unknown to the approval service (no HR event yet)", req.GetWorkerId())
		}
		if err != nil {
			return err
		}
		if w.status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() {
			return status.Errorf(codes.FailedPrecondition, "worker %s is terminated", w.id)
		}
		held, err := heldPackages(ctx, tx, w.id)
		if err != nil {
			return err
		}
		if slices.Contains(held, pk.Name) {
			return status.Errorf(codes.AlreadyExists, "worker %s already holds %s", w.id, pk.Name)
		}
		nr := newRequest{kind: kind, requestedBy: who, justification: req.GetJustification(), end: end, duration: dur}
		if rule, _, bad := pol.Conflicts(held, pk.Name); bad {
			if !req.GetSodException() {
				// Refused, and on record: asking again with sod_exception re-evaluates it.
				ref := s.sodRefusal(ctx, tx, pol, w, pk)
				evs, err := s.recordRefused(ctx, tx, w, pk, nr, ref)
				if err != nil {
					return err
				}
				refused = ref.msg
				return pgstore.Enqueue(ctx, tx, evs...)
			}
			nr.sodRule = rule.Name
		}
		id2, evs, err := s.createRequest(ctx, tx, pol, w, pk, nr)
		var ref *refusal
		switch {
		case errors.As(err, &ref):
			evs, err := s.recordRefused(ctx, tx, w, pk, nr, ref)
			if err != nil {
				return err
			}
			refused = "refused: " + ref.msg
			return pgstore.Enqueue(ctx, tx, evs...)
		case errors.Is(err, errDuplicateRequest):
			return status.Errorf(codes.AlreadyExists, "a request for %s by %s is already pending", pk.Name, w.id)
		case err != nil:
			return err
		}
		id = id2
		return pgstore.Enqueue(ctx, tx, evs...)
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	s.relay.Poke()
	if refused != "" {
		return nil, status.Error(codes.FailedPrecondition, refused+" (kept as a refused request: tenurectl requests --status refused)")
	}
	r, err := loadRequest(ctx, s.pool, id, false)
	if err != nil {
		return nil, grpcErr(err)
	}
	return &approvalv1.RequestAccessResponse{Request: r.proto()}, nil
}

// GetRequest returns one request with its stages.
func (s *Service) GetRequest(ctx context.Context, req *approvalv1.GetRequestRequest) (*approvalv1.GetRequestResponse, error) {
	r, err := loadRequest(ctx, s.pool, req.GetRequestId(), false)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "no request %s", req.GetRequestId())
	}
	if err != nil {
		return nil, grpcErr(err)
	}
	return &approvalv1.GetRequestResponse{Request: r.proto()}, nil
}

// ListRequests lists requests by worker, status and system; mine keeps those whose current
// stage the caller may decide.
func (s *Service) ListRequests(ctx context.Context, req *approvalv1.ListRequestsRequest) (*approvalv1.ListRequestsResponse, error) {
	limit := req.GetLimit()
	if limit <= 0 || limit > 1000 {
		limit = 200
	}
	rows, err := s.pool.Query(ctx, `SELECT request_id FROM requests WHERE ($1 = '' OR worker_id = $1) AND ($2 = '' OR status = $2) AND ($3 = '' OR system = $3)
		ORDER BY created_at DESC LIMIT $4`, req.GetWorkerId(), req.GetStatus(), req.GetSystem(), limit)
	if err != nil {
		return nil, grpcErr(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, grpcErr(err)
	}
	var p authn.Principal
	var who string
	if req.GetMine() {
		if p, who, err = s.caller(ctx); err != nil {
			return nil, err
		}
	}
	out := &approvalv1.ListRequestsResponse{}
	for _, id := range ids {
		r, err := loadRequest(ctx, s.pool, id, false)
		if err != nil {
			return nil, grpcErr(err)
		}
		if req.GetMine() {
			st, ok := r.current()
			if r.status != "pending" || !ok || mayDecide(p, who, r, st) != nil {
				continue
			}
		}
		out.Requests = append(out.Requests, r.proto())
	}
	return out, nil
}

func grpcErr(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return status.Errorf(codes.Internal, "database: %s", pe.Message)
	}
	return status.Error(codes.Internal, err.Error())
}
