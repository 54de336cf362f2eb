package approval

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// BreakGlass grants emergency access at once: no approval stage, a mandatory reason code
// from policy, an expiry no later than break_glass.max_duration, an alert on
// tenure.alert.breakglass.<worker>, and a post-use review that is overdue after
// break_glass.review_within until a security reviewer closes it.
func (s *Service) BreakGlass(ctx context.Context, req *approvalv1.BreakGlassRequest) (*approvalv1.BreakGlassResponse, error) {
	p, who, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	pol := s.policy.Load()
	if req.GetWorkerId() == "" || req.GetPackage() == "" {
		return nil, status.Error(codes.InvalidArgument, "worker_id and package are required")
	}
	if !slices.Contains(pol.BreakGlass.ReasonCodes, req.GetReasonCode()) {
		return nil, status.Errorf(codes.InvalidArgument, "reason_code %q is not one of the policy's break_glass.reason_codes %v", req.GetReasonCode(), pol.BreakGlass.ReasonCodes)
	}
	if !slices.Contains(pol.BreakGlass.Packages, req.GetPackage()) {
		return nil, status.Errorf(codes.PermissionDenied, "package %q is not available for break-glass (policy break_glass.packages)", req.GetPackage())
	}
	pk, _ := pol.Package(req.GetPackage())
	// Longer than the maximum is refused, as for JIT, never silently shortened.
	d := pol.BreakGlass.MaxDuration.D()
	if req.GetDurationSeconds() < 0 {
		return nil, status.Error(codes.InvalidArgument, "duration_seconds must not be negative")
	}
	if req.GetDurationSeconds() > 0 {
		asked := time.Duration(req.GetDurationSeconds()) * time.Second
		if asked > d {
			return nil, status.Errorf(codes.InvalidArgument, "duration %s is longer than break-glass allows (break_glass.max_duration %s)", asked, d)
		}
		d = asked
	}
	now := time.Now().UTC()
	expires := now.Add(d)
	due := now.Add(pol.BreakGlass.ReviewWithin.D())
	reviewID := events.NewID()
	var use *approvalv1.BreakGlassUse
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		w, err := loadWorker(ctx, tx, req.GetWorkerId())
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "worker %s is unknown to the approval service", req.GetWorkerId())
		}
		if err != nil {
			return err
		}
		if w.status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() {
			return status.Errorf(codes.FailedPrecondition, "worker %s is terminated", w.id)
		}
		if ref := s.refuse(ctx, tx, pol, w, pk); ref != nil {
			return status.Error(codes.FailedPrecondition, "refused: "+ref.msg)
		}
		held, err := heldPackages(ctx, tx, w.id)
		if err != nil {
			return err
		}
		if slices.Contains(held, pk.Name) {
			return status.Errorf(codes.AlreadyExists, "worker %s already holds %s", w.id, pk.Name)
		}
		ev, err := s.grant(ctx, tx, pol, w, pk, grantSpec{kind: kindBreakGlass, actor: who, reason: "break-glass " + req.GetReasonCode() + ": " + req.GetJustification(),
			expires: &expires, approvals: []*eventsv1.Approval{{Stage: "break_glass", Approver: who, DecidedAt: timestamppb.New(now), Comment: req.GetReasonCode() + ": " + req.GetJustification()}}})
		if err != nil {
			return err
		}
		gid := ev.Payload.(*eventsv1.AccessDecision).GrantId
		if _, err := tx.Exec(ctx, `INSERT INTO breakglass (review_id, grant_id, worker_id, reason_code, justification, invoked_by, due_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			reviewID, gid, w.id, req.GetReasonCode(), req.GetJustification(), who, due); err != nil {
			return err
		}
		exp := ev.Payload.(*eventsv1.AccessDecision).GetExpiresAt()
		alert := &eventsv1.BreakGlassAlert{GrantId: gid, WorkerId: w.id, System: pk.System, Package: pk.Name, ReasonCode: req.GetReasonCode(), Justification: req.GetJustification(),
			InvokedBy: who, GrantedAt: timestamppb.New(now), ExpiresAt: exp, ReviewId: reviewID, ReviewDue: timestamppb.New(due)}
		use = &approvalv1.BreakGlassUse{GrantId: gid, WorkerId: w.id, System: pk.System, Package: pk.Name, ReasonCode: req.GetReasonCode(), Justification: req.GetJustification(),
			InvokedBy: who, GrantedAt: timestamppb.New(now), ExpiresAt: exp, ReviewId: reviewID, ReviewDue: timestamppb.New(due), ReviewStatus: "open"}
		return pgstore.Enqueue(ctx, tx, ev, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.alert", "breakglass", w.id), Source: source, WorkerID: w.id,
			Actor: who, Time: now, Payload: alert})
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	s.relay.Poke()
	s.log.WarnContext(ctx, "break-glass access granted", "worker", req.GetWorkerId(), "package", req.GetPackage(), "reason", req.GetReasonCode(), "by", p.Name)
	return &approvalv1.BreakGlassResponse{Use: use}, nil
}

func (s *Service) listBreakGlass(ctx context.Context, q pgxQuerier, where string, args ...any) ([]*approvalv1.BreakGlassUse, error) {
	rows, err := q.Query(ctx, `SELECT b.review_id, b.grant_id, b.worker_id, g.system, g.package, b.reason_code, b.justification, b.invoked_by, g.granted_at, g.expires_at,
		  b.due_at, b.reviewed_by, b.reviewed_at, b.comment
		FROM breakglass b JOIN grants g USING (grant_id) WHERE `+where+` ORDER BY g.granted_at DESC LIMIT 1000`, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (*approvalv1.BreakGlassUse, error) {
		var u approvalv1.BreakGlassUse
		var granted, due time.Time
		var expires, reviewed *time.Time
		if err := r.Scan(&u.ReviewId, &u.GrantId, &u.WorkerId, &u.System, &u.Package, &u.ReasonCode, &u.Justification, &u.InvokedBy, &granted, &expires,
			&due, &u.ReviewedBy, &reviewed, &u.ReviewComment); err != nil {
			return nil, err
		}
		u.GrantedAt, u.ReviewDue = timestamppb.New(granted), timestamppb.New(due)
		if expires != nil {
			u.ExpiresAt = timestamppb.New(*expires)
		}
		switch {
		case reviewed != nil:
			u.ReviewStatus, u.ReviewedAt = "closed", timestamppb.New(*reviewed)
		case time.Now().After(due):
			u.ReviewStatus = "overdue"
		default:
			u.ReviewStatus = "open"
		}
		return &u, nil
	})
}

// ListBreakGlass lists break-glass uses and the state of their reviews.
func (s *Service) ListBreakGlass(ctx context.Context, req *approvalv1.ListBreakGlassRequest) (*approvalv1.ListBreakGlassResponse, error) {
	uses, err := s.listBreakGlass(ctx, s.pool, "($1 = '' OR b.worker_id = $1) AND (NOT $2 OR b.reviewed_at IS NULL)", req.GetWorkerId(), req.GetOpenOnly())
	if err != nil {
		return nil, grpcErr(err)
	}
	return &approvalv1.ListBreakGlassResponse{Uses: uses}, nil
}

// CloseBreakGlassReview records the post-use review. The reviewer is neither the worker nor
// whoever invoked break-glass. A review covers the whole use: closing it while the access is
// still active ends the access first (the grant is revoked, reason "break-glass review
// closed"), and the answer says so (access_ended).
func (s *Service) CloseBreakGlassReview(ctx context.Context, req *approvalv1.CloseBreakGlassReviewRequest) (*approvalv1.CloseBreakGlassReviewResponse, error) {
	p, who, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.GetComment()) == "" {
		return nil, status.Error(codes.InvalidArgument, "a review comment is required")
	}
	var use *approvalv1.BreakGlassUse
	var accessEnded bool
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		var worker, invoker string
		var reviewed *time.Time
		err := tx.QueryRow(ctx, "SELECT worker_id, invoked_by, reviewed_at FROM breakglass WHERE review_id = $1 FOR UPDATE", req.GetReviewId()).Scan(&worker, &invoker, &reviewed)
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "no break-glass review %s", req.GetReviewId())
		}
		if err != nil {
			return err
		}
		if reviewed != nil {
			return status.Errorf(codes.FailedPrecondition, "review %s is already closed", req.GetReviewId())
		}
		if who == worker || who == invoker || p.Name == invoker {
			return status.Errorf(codes.PermissionDenied, "%s used or invoked this break-glass access and cannot review it", who)
		}
		if !p.Has(authn.RoleSecurity) {
			return status.Error(codes.PermissionDenied, "break-glass reviews are closed by security")
		}
		var grantID string
		if err := tx.QueryRow(ctx, "SELECT grant_id FROM breakglass WHERE review_id = $1", req.GetReviewId()).Scan(&grantID); err != nil {
			return err
		}
		ended, err := s.revokeGrantID(ctx, tx, grantID, "break-glass review "+req.GetReviewId()+" closed by "+who+" while the access was active", who)
		if err != nil {
			return err
		}
		accessEnded = len(ended) > 0
		if _, err := tx.Exec(ctx, "UPDATE breakglass SET reviewed_by = $2, reviewed_at = now(), comment = $3 WHERE review_id = $1", req.GetReviewId(), who, req.GetComment()); err != nil {
			return err
		}
		uses, err := s.listBreakGlass(ctx, tx, "b.review_id = $1", req.GetReviewId())
		if err != nil || len(uses) == 0 {
			return err
		}
		use = uses[0]
		return pgstore.Enqueue(ctx, tx, append(ended, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.access", "breakglass_reviewed", worker), Source: source, WorkerID: worker, Actor: who,
			Payload: &eventsv1.BreakGlassAlert{GrantId: use.GrantId, WorkerId: worker, System: use.System, Package: use.Package, ReasonCode: use.ReasonCode,
				Justification: req.GetComment(), InvokedBy: use.InvokedBy, GrantedAt: use.GrantedAt, ExpiresAt: use.ExpiresAt, ReviewId: use.ReviewId, ReviewDue: use.ReviewDue}})...)
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	s.relay.Poke()
	return &approvalv1.CloseBreakGlassReviewResponse{Use: use, AccessEnded: accessEnded}, nil
}
