package approval

import (
	"context"
	"errors"
	"fmt"
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

const defaultReviewDeadline = 14 * 24 * time.Hour

// reviewerFor picks who certifies a grant: the system owner (or the holder's manager when the
// policy says so), never the holder; failing both, security.
func reviewerFor(sys System, w workerRow) string {
	order := []string{sys.Owner, w.manager}
	if sys.Review.Reviewer == "manager" {
		order = []string{w.manager, sys.Owner}
	}
	if w.manager == "" && w.sponsor != "" {
		order = append(order, w.sponsor)
	}
	for _, r := range order {
		if r != "" && r != w.id {
			return r
		}
	}
	return securityApprover
}

// startCampaign opens a campaign over every active grant on the system.
func (s *Service) startCampaign(ctx context.Context, tx pgx.Tx, pol *Policy, system, by string, deadline time.Duration) (string, []events.Event, error) {
	sys, ok := pol.System(system)
	if !ok {
		return "", nil, status.Errorf(codes.NotFound, "no system %q in the policy", system)
	}
	if deadline <= 0 {
		deadline = sys.Review.Deadline.D()
	}
	if deadline <= 0 {
		deadline = defaultReviewDeadline
	}
	now := time.Now().UTC()
	id := events.NewID()
	if _, err := tx.Exec(ctx, `INSERT INTO review_campaigns (campaign_id, system, status, started_by, started_at, deadline, revoke_unanswered)
		VALUES ($1, $2, 'open', $3, $4, $5, $6)`, id, system, by, now, now.Add(deadline), sys.Review.RevokeUnanswered); err != nil {
		return "", nil, err
	}
	rows, err := tx.Query(ctx, "SELECT grant_id, worker_id, package FROM grants WHERE system = $1 AND revoked_at IS NULL ORDER BY granted_at", system)
	if err != nil {
		return "", nil, err
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([3]string, error) {
		var x [3]string
		return x, r.Scan(&x[0], &x[1], &x[2])
	})
	if err != nil {
		return "", nil, err
	}
	for _, it := range items {
		w, err := loadWorker(ctx, tx, it[1])
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return "", nil, err
		}
		w.id = it[1]
		if _, err := tx.Exec(ctx, "INSERT INTO review_items (campaign_id, grant_id, worker_id, package, reviewer) VALUES ($1, $2, $3, $4, $5)",
			id, it[0], it[1], it[2], reviewerFor(sys, w)); err != nil {
			return "", nil, err
		}
	}
	out := []events.Event{{ID: events.NewID(), Subject: events.Subject("tenure.access", "review_started", system), Source: source, Actor: by,
		Payload: &eventsv1.ReviewEvent{CampaignId: id, System: system, Status: "started", Items: int32(len(items)), StartedAt: timestamppb.New(now),
			Deadline: timestamppb.New(now.Add(deadline)), StartedBy: by}}}
	done, err := s.maybeCloseCampaign(ctx, tx, id)
	return id, append(out, done...), err
}

// closeCampaigns closes the open campaigns that review any of these grants, when complete.
func (s *Service) closeCampaigns(ctx context.Context, tx pgx.Tx, grantIDs []string) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT c.campaign_id FROM review_campaigns c JOIN review_items i USING (campaign_id)
		WHERE c.status = 'open' AND i.grant_id = ANY($1)`, grantIDs)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var out []events.Event
	for _, id := range ids {
		evs, err := s.maybeCloseCampaign(ctx, tx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

// maybeCloseCampaign closes a campaign once every item is kept, or revoked with the
// provisioner's read-back confirmation: the remediation proof.
func (s *Service) maybeCloseCampaign(ctx context.Context, tx pgx.Tx, id string) ([]events.Event, error) {
	var system, st, by string
	var started, deadline time.Time
	if err := tx.QueryRow(ctx, "SELECT system, status, started_by, started_at, deadline FROM review_campaigns WHERE campaign_id = $1 FOR UPDATE", id).
		Scan(&system, &st, &by, &started, &deadline); err != nil {
		return nil, err
	}
	if st != "open" {
		return nil, nil
	}
	var items, open, kept, revoked, confirmed int32
	if err := tx.QueryRow(ctx, `SELECT count(*),
		  count(*) FILTER (WHERE NOT (i.decision = 'keep' AND g.revoked_at IS NULL) AND NOT (g.revoked_at IS NOT NULL AND g.revoke_confirmed_at IS NOT NULL)),
		  count(*) FILTER (WHERE i.decision = 'keep'),
		  count(*) FILTER (WHERE g.revoked_at IS NOT NULL),
		  count(*) FILTER (WHERE g.revoke_confirmed_at IS NOT NULL)
		FROM review_items i JOIN grants g USING (grant_id) WHERE i.campaign_id = $1`, id).Scan(&items, &open, &kept, &revoked, &confirmed); err != nil {
		return nil, err
	}
	if open > 0 {
		return nil, nil
	}
	now := time.Now().UTC()
	if _, err := tx.Exec(ctx, "UPDATE review_campaigns SET status = 'closed', closed_at = $2 WHERE campaign_id = $1", id, now); err != nil {
		return nil, err
	}
	return []events.Event{{ID: events.NewID(), Subject: events.Subject("tenure.access", "review_closed", system), Source: source, Actor: "policy",
		Payload: &eventsv1.ReviewEvent{CampaignId: id, System: system, Status: "closed", Items: items, Kept: kept, Revoked: revoked, RevokesConfirmed: confirmed,
			StartedAt: timestamppb.New(started), Deadline: timestamppb.New(deadline), ClosedAt: timestamppb.New(now), StartedBy: by}}}, nil
}

// StartReview opens a campaign for a system on demand.
func (s *Service) StartReview(ctx context.Context, req *approvalv1.StartReviewRequest) (*approvalv1.StartReviewResponse, error) {
	_, who, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	var c *approvalv1.ReviewCampaign
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		id, evs, err := s.startCampaign(ctx, tx, s.policy.Load(), req.GetSystem(), who, time.Duration(req.GetDeadlineSeconds())*time.Second)
		if err != nil {
			return err
		}
		if err := pgstore.Enqueue(ctx, tx, evs...); err != nil {
			return err
		}
		c, err = s.campaign(ctx, tx, id, true)
		return err
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	s.relay.Poke()
	return &approvalv1.StartReviewResponse{Campaign: c}, nil
}

// DecideReview records keep or revoke for one grant. The caller must be the item's reviewer
// (or security, once the item is escalated) and never the holder; revokes go to provisioning.
func (s *Service) DecideReview(ctx context.Context, req *approvalv1.DecideReviewRequest) (*approvalv1.DecideReviewResponse, error) {
	p, who, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetDecision() != "keep" && req.GetDecision() != "revoke" {
		return nil, status.Error(codes.InvalidArgument, "decision must be keep or revoke")
	}
	var c *approvalv1.ReviewCampaign
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		var worker, reviewer, decision, cstatus string
		var escalated *time.Time
		err := tx.QueryRow(ctx, `SELECT i.worker_id, i.reviewer, i.decision, i.escalated_at, c.status FROM review_items i JOIN review_campaigns c USING (campaign_id)
			WHERE i.campaign_id = $1 AND i.grant_id = $2 FOR UPDATE`, req.GetCampaignId(), req.GetGrantId()).Scan(&worker, &reviewer, &decision, &escalated, &cstatus)
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "campaign %s has no item for grant %s", req.GetCampaignId(), req.GetGrantId())
		}
		if err != nil {
			return err
		}
		if cstatus != "open" {
			return status.Errorf(codes.FailedPrecondition, "campaign %s is %s", req.GetCampaignId(), cstatus)
		}
		if decision != "" {
			return status.Errorf(codes.FailedPrecondition, "grant %s was already decided: %s", req.GetGrantId(), decision)
		}
		if who == worker {
			return status.Errorf(codes.PermissionDenied, "%s cannot review their own access", who)
		}
		security := p.Has(authn.RoleSecurity) && (reviewer == securityApprover || escalated != nil)
		if who != reviewer && !security {
			return status.Errorf(codes.PermissionDenied, "grant %s is reviewed by %s, not %s", req.GetGrantId(), reviewer, who)
		}
		if _, err := tx.Exec(ctx, `UPDATE review_items SET decision = $3, comment = $4, decided_by = $5, decided_at = now() WHERE campaign_id = $1 AND grant_id = $2`,
			req.GetCampaignId(), req.GetGrantId(), req.GetDecision(), req.GetComment(), who); err != nil {
			return err
		}
		var pkg, sys string
		if err := tx.QueryRow(ctx, "SELECT package, system FROM grants WHERE grant_id = $1", req.GetGrantId()).Scan(&pkg, &sys); err != nil {
			return err
		}
		// Every decision goes to the ledger: auditors ask who kept what, not only what was revoked.
		out := []events.Event{{ID: events.NewID(), Subject: events.Subject("tenure.access", "review_decided", worker), Source: source, WorkerID: worker, Actor: who,
			Payload: &eventsv1.ReviewDecision{CampaignId: req.GetCampaignId(), System: sys, GrantId: req.GetGrantId(), WorkerId: worker, Package: pkg,
				Reviewer: who, Decision: req.GetDecision(), Comment: req.GetComment(), DecidedAt: timestamppb.Now(), Escalated: escalated != nil}}}
		if req.GetDecision() == "revoke" {
			evs, err := s.revokeGrantID(ctx, tx, req.GetGrantId(), fmt.Sprintf("access review %s: revoked by %s: %s", req.GetCampaignId(), who, req.GetComment()), who)
			if err != nil {
				return err
			}
			out = append(out, evs...)
		}
		done, err := s.maybeCloseCampaign(ctx, tx, req.GetCampaignId())
		if err != nil {
			return err
		}
		if err := pgstore.Enqueue(ctx, tx, append(out, done...)...); err != nil {
			return err
		}
		c, err = s.campaign(ctx, tx, req.GetCampaignId(), true)
		return err
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	s.relay.Poke()
	return &approvalv1.DecideReviewResponse{Campaign: c}, nil
}

// campaign reads a campaign through q: the pool, or the transaction that just changed it, so
// the answer shows that change and not what the provisioner did after it.
func (s *Service) campaign(ctx context.Context, q pgxQuerier, id string, withItems bool) (*approvalv1.ReviewCampaign, error) {
	var c approvalv1.ReviewCampaign
	var started, deadline time.Time
	var closed *time.Time
	err := q.QueryRow(ctx, `SELECT campaign_id, system, status, started_by, started_at, deadline, closed_at,
		  (SELECT count(*) FROM review_items i WHERE i.campaign_id = c.campaign_id),
		  (SELECT count(*) FROM review_items i WHERE i.campaign_id = c.campaign_id AND i.decision <> ''),
		  (SELECT count(*) FROM review_items i JOIN grants g USING (grant_id) WHERE i.campaign_id = c.campaign_id AND g.revoked_at IS NOT NULL),
		  (SELECT count(*) FROM review_items i JOIN grants g USING (grant_id) WHERE i.campaign_id = c.campaign_id AND g.revoke_confirmed_at IS NOT NULL)
		FROM review_campaigns c WHERE campaign_id = $1`, id).Scan(&c.CampaignId, &c.System, &c.Status, &c.StartedBy, &started, &deadline, &closed,
		&c.Items, &c.Decided, &c.Revoked, &c.RevokesConfirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "no review campaign %s", id)
	}
	if err != nil {
		return nil, err
	}
	c.StartedAt, c.Deadline = timestamppb.New(started), timestamppb.New(deadline)
	if closed != nil {
		c.ClosedAt = timestamppb.New(*closed)
	}
	if !withItems {
		return &c, nil
	}
	rows, err := q.Query(ctx, `SELECT i.grant_id, i.worker_id, i.package, i.reviewer, i.decision, i.comment, i.decided_by, i.decided_at, i.escalated_at,
		  g.revoke_confirmed_at, g.revoked_at
		FROM review_items i JOIN grants g USING (grant_id) WHERE i.campaign_id = $1 ORDER BY i.worker_id, i.package`, id)
	if err != nil {
		return nil, err
	}
	c.ReviewItems, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*approvalv1.ReviewItem, error) {
		var it approvalv1.ReviewItem
		var decided, escalated, confirmed, revoked *time.Time
		if err := r.Scan(&it.GrantId, &it.WorkerId, &it.Package, &it.Reviewer, &it.Decision, &it.Comment, &it.DecidedBy, &decided, &escalated, &confirmed, &revoked); err != nil {
			return nil, err
		}
		it.DecidedAt, it.EscalatedAt, it.RevokeConfirmedAt, it.RevokedAt = ts(decided), ts(escalated), ts(confirmed), ts(revoked)
		return &it, nil
	})
	return &c, err
}

func ts(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

// GetReview returns a campaign with its items.
func (s *Service) GetReview(ctx context.Context, req *approvalv1.GetReviewRequest) (*approvalv1.GetReviewResponse, error) {
	c, err := s.campaign(ctx, s.pool, req.GetCampaignId(), true)
	if err != nil {
		return nil, grpcErr(err)
	}
	return &approvalv1.GetReviewResponse{Campaign: c}, nil
}

// ListReviews lists campaigns, newest first.
func (s *Service) ListReviews(ctx context.Context, req *approvalv1.ListReviewsRequest) (*approvalv1.ListReviewsResponse, error) {
	rows, err := s.pool.Query(ctx, `SELECT campaign_id FROM review_campaigns WHERE ($1 = '' OR system = $1) AND (NOT $2 OR status = 'open')
		ORDER BY started_at DESC LIMIT 500`, req.GetSystem(), req.GetOpenOnly())
	if err != nil {
		return nil, grpcErr(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, grpcErr(err)
	}
	out := &approvalv1.ListReviewsResponse{}
	for _, id := range ids {
		c, err := s.campaign(ctx, s.pool, id, false)
		if err != nil {
			return nil, grpcErr(err)
		}
		out.Campaigns = append(out.Campaigns, c)
	}
	return out, nil
}
