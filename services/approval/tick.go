package approval

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// runTicker acts on stored deadlines. They live in PostgreSQL, so a restart only delays an
// expiry by one tick; the first check runs at start-up.
func (s *Service) runTicker(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		if err := s.Tick(ctx); err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "deadline check", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Tick runs every deadline check once: expired grants (JIT, break-glass, worker end date),
// re-approval windows, overdue break-glass reviews, review deadlines and review cadence.
func (s *Service) Tick(ctx context.Context) error {
	for _, step := range []func(context.Context, pgx.Tx) ([]events.Event, error){s.expireGrants, s.alertBreakGlassOverdue, s.escalateReviews, s.scheduleReviews} {
		var n int
		err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
			out, err := step(ctx, tx)
			if err != nil {
				return err
			}
			n = len(out)
			return pgstore.Enqueue(ctx, tx, out...)
		})
		if err != nil {
			return err
		}
		if n > 0 {
			s.relay.Poke()
		}
	}
	return nil
}

func (s *Service) expireGrants(ctx context.Context, tx pgx.Tx) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `SELECT grant_id, worker_id, system, package, connector, role, request_id, kind, entitlements,
		  CASE WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired at ' || to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
		       ELSE 'not re-approved after the job change by ' || to_char(reapprove_by AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') END
		FROM grants WHERE revoked_at IS NULL AND (expires_at <= now() OR reapprove_by <= now()) ORDER BY grant_id LIMIT 500 FOR UPDATE SKIP LOCKED`)
	if err != nil {
		return nil, err
	}
	type exp struct {
		g              grantRow
		worker, reason string
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (exp, error) {
		var x exp
		return x, r.Scan(&x.g.id, &x.worker, &x.g.system, &x.g.pkg, &x.g.connector, &x.g.role, &x.g.requestID, &x.g.kind, &x.g.entitlements, &x.reason)
	})
	if err != nil {
		return nil, err
	}
	var out []events.Event
	for _, x := range list {
		ev, err := s.revoke(ctx, tx, x.worker, x.g, x.reason, "policy")
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

func (s *Service) alertBreakGlassOverdue(ctx context.Context, tx pgx.Tx) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `UPDATE breakglass SET overdue_alerted_at = now() WHERE reviewed_at IS NULL AND due_at <= now() AND overdue_alerted_at IS NULL
		RETURNING review_id`)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	uses, err := s.listBreakGlass(ctx, tx, "b.review_id = ANY($1)", ids)
	if err != nil {
		return nil, err
	}
	var out []events.Event
	for _, u := range uses {
		out = append(out, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.alert", "breakglass_review_overdue", u.WorkerId), Source: source, WorkerID: u.WorkerId,
			Actor: "policy", Payload: &eventsv1.BreakGlassAlert{GrantId: u.GrantId, WorkerId: u.WorkerId, System: u.System, Package: u.Package, ReasonCode: u.ReasonCode,
				Justification: u.Justification, InvokedBy: u.InvokedBy, GrantedAt: u.GrantedAt, ExpiresAt: u.ExpiresAt, ReviewId: u.ReviewId, ReviewDue: u.ReviewDue}})
	}
	return out, nil
}

// escalateReviews handles campaigns past their deadline: unanswered items go to security,
// and, where the policy says so, their access is revoked.
func (s *Service) escalateReviews(ctx context.Context, tx pgx.Tx) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `UPDATE review_campaigns SET escalated_at = now() WHERE status = 'open' AND deadline <= now() AND escalated_at IS NULL
		RETURNING campaign_id, system, revoke_unanswered, started_at, deadline, started_by`)
	if err != nil {
		return nil, err
	}
	type camp struct {
		id, system, by    string
		revoke            bool
		started, deadline time.Time
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (camp, error) {
		var c camp
		return c, r.Scan(&c.id, &c.system, &c.revoke, &c.started, &c.deadline, &c.by)
	})
	if err != nil {
		return nil, err
	}
	var out []events.Event
	for _, c := range list {
		rows, err := tx.Query(ctx, `UPDATE review_items SET escalated_at = now() WHERE campaign_id = $1 AND decision = '' RETURNING grant_id`, c.id)
		if err != nil {
			return nil, err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, err
		}
		if len(ids) > 0 {
			out = append(out, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.alert", "review_escalated", c.system), Source: source, Actor: "policy",
				Payload: &eventsv1.ReviewEvent{CampaignId: c.id, System: c.system, Status: "escalated", StartedAt: timestamppb.New(c.started),
					Deadline: timestamppb.New(c.deadline), StartedBy: c.by, UnansweredGrantIds: ids}})
		}
		if c.revoke {
			for _, g := range ids {
				if _, err := tx.Exec(ctx, `UPDATE review_items SET decision = 'revoke', decided_by = 'policy:unanswered', decided_at = now(),
					comment = 'no answer by the deadline' WHERE campaign_id = $1 AND grant_id = $2`, c.id, g); err != nil {
					return nil, err
				}
				evs, err := s.revokeGrantID(ctx, tx, g, "access review "+c.id+": unanswered by the deadline", "policy")
				if err != nil {
					return nil, err
				}
				out = append(out, evs...)
			}
		}
		done, err := s.maybeCloseCampaign(ctx, tx, c.id)
		if err != nil {
			return nil, err
		}
		out = append(out, done...)
	}
	return out, nil
}

// scheduleReviews starts a campaign for each system whose cadence is due.
func (s *Service) scheduleReviews(ctx context.Context, tx pgx.Tx) ([]events.Event, error) {
	pol := s.policy.Load()
	var out []events.Event
	for _, sys := range pol.Systems {
		every := sys.Review.Every.D()
		if every <= 0 {
			continue
		}
		// One scheduler at a time per system, across replicas.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('approval-review:' || $1))", sys.Name); err != nil {
			return nil, err
		}
		var last *time.Time
		if err := tx.QueryRow(ctx, "SELECT max(started_at) FROM review_campaigns WHERE system = $1", sys.Name).Scan(&last); err != nil {
			return nil, err
		}
		if last != nil && time.Since(*last) < every {
			continue
		}
		_, evs, err := s.startCampaign(ctx, tx, pol, sys.Name, "policy:cadence", 0)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}
