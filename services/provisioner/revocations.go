package provisioner

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// grantRevokedEventID is the event id (ce-id, Nats-Msg-Id) of a grant's grant_revoked
// revocation. It is derived from the grant, so even an event written twice is published and
// consumed once: the outbox, JetStream's duplicate window and every inbox drop the second.
func grantRevokedEventID(grantID string) string { return "provisioner:grant_revoked:" + grantID }

// grantRevocations confirms the link's revoked grants that a read-back at the link's current
// generation now reflects, and returns one tenure.revocation.grant_revoked event for each.
// The caller has just recorded that read-back (or found it recorded) in tx. A grant is
// confirmed once (link_grants.revoke_confirmed_at), so later read-backs, redelivered
// commands and repeated decisions announce nothing new. The revocation id is the grant id.
func (s *Service) grantRevocations(ctx context.Context, tx pgx.Tx, l link, caseID string, at time.Time) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `UPDATE link_grants SET revoke_confirmed_at = $2
		WHERE link_id = $1 AND NOT active AND revoke_confirmed_at IS NULL RETURNING grant_id, entitlements, revoke_reason`, l.id, at)
	if err != nil {
		return nil, err
	}
	grants, err := pgx.CollectRows(rows, pgx.RowToStructByPos[revokedGrant])
	if err != nil {
		return nil, err
	}
	var system string
	if t := s.targets[l.conn]; t != nil {
		system = t.System
	}
	undone := false
	if len(grants) > 0 {
		if undone, err = leaverRescinded(ctx, tx, l.worker); err != nil {
			return nil, err
		}
	}
	out := make([]events.Event, 0, len(grants))
	for _, g := range grants {
		if undone && g.byLeaver() {
			continue
		}
		out = append(out, grantRevokedEvent(l, system, g, caseID, at))
	}
	return out, nil
}

// byLeaver: the grant was revoked because its worker left (approval's reason "leaver: ...").
func (g revokedGrant) byLeaver() bool { return strings.HasPrefix(g.Reason, "leaver:") }

// leaverRescinded reports whether the worker's latest leaver case was rescinded: HR took the
// termination back, so a grant its leaver revoked is confirmed (to approval, through the
// result) but announces no grant_revoked revocation — the worker was reinstated, and a
// security team acting on it would act against them.
func leaverRescinded(ctx context.Context, tx pgx.Tx, worker string) (bool, error) {
	var rescinded bool
	err := tx.QueryRow(ctx, `SELECT rescinded_at IS NOT NULL FROM cases WHERE worker_id = $1 ORDER BY opened_at DESC LIMIT 1`, worker).Scan(&rescinded)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return rescinded, err
}

// revokedGrant is a revoked grant a read-back confirmed.
type revokedGrant struct {
	ID           string   `json:"id"`
	Entitlements []string `json:"entitlements"`
	Reason       string   `json:"reason"` // why it was revoked (approval's decision)
}

// grantRevokedEvent is the tenure.revocation.grant_revoked event of a confirmed revoke.
func grantRevokedEvent(l link, system string, g revokedGrant, caseID string, at time.Time) events.Event {
	return events.Event{ID: grantRevokedEventID(g.ID), Subject: events.Subject("tenure.revocation", "grant_revoked", l.worker), Source: source,
		WorkerID: l.worker, Actor: "provisioner",
		Payload: &eventsv1.Revocation{RevocationId: g.ID, Kind: eventsv1.RevocationKind_REVOCATION_KIND_GRANT_REVOKED, WorkerId: l.worker, Email: l.email,
			Connector: l.conn, System: system, LinkId: l.id, Username: l.username, CaseId: caseID, OccurredAt: timestamppb.New(at), Verified: true,
			GrantId: g.ID, Entitlements: g.Entitlements}}
}

// confirmUnchanged answers a revoke that changed nothing the target has to do (the
// entitlement is still held through another grant, the account is already disabled or
// deleted): no command runs, so no read-back would otherwise report the grant. When the
// link's last read-back is at its current generation, that read-back already shows the state
// without the grant, so the revoke is confirmed now: a verified result carrying the grant in
// revoked_grant_ids (the approval service's confirmation, which access reviews wait for) and
// the grant_revoked revocation. When a command for the link is still under way, its
// read-back confirms the revoke instead.
func (s *Service) confirmUnchanged(ctx context.Context, tx pgx.Tx, linkID, grantID string) ([]events.Event, error) {
	var l link
	var observed string
	var observedEnts []string
	var observedGen int64
	var verifiedAt *time.Time
	err := tx.QueryRow(ctx, `SELECT l.link_id, l.worker_id, l.connector, l.username, l.desired_state, l.generation, l.observed_state, l.observed_entitlements,
		  l.observed_generation, l.verified_at, coalesce(w.email, '')
		FROM links l LEFT JOIN workers w USING (worker_id) WHERE l.link_id = $1`, linkID).
		Scan(&l.id, &l.worker, &l.conn, &l.username, &l.desired, &l.generation, &observed, &observedEnts, &observedGen, &verifiedAt, &l.email)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil || verifiedAt == nil || observedGen != l.generation {
		return nil, err
	}
	now := time.Now().UTC()
	// Op ensure, not disable, even for a disabled account: this result ran no command, and
	// leaver evidence counts only the disable results of the case's own commands.
	r := &eventsv1.ProvisionResult{Connector: l.conn, Op: eventsv1.ProvisionOp_PROVISION_OP_ENSURE, WorkerId: l.worker, LinkId: l.id, Username: l.username,
		Outcome: eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED, ObservedState: stateOf(observed), Generation: l.generation,
		CompletedAt: timestamppb.New(now), Entitlements: observedEnts}
	if err := grantIDs(ctx, tx, l.id, r); err != nil {
		return nil, err
	}
	out := []events.Event{{ID: "provisioner:revoke_confirmed:" + grantID, Subject: events.Subject("tenure.result."+l.conn, "verified"), Source: source,
		WorkerID: l.worker, Actor: "provisioner", Payload: r}}
	revs, err := s.grantRevocations(ctx, tx, l, "", now)
	if err != nil {
		return nil, err
	}
	return append(out, revs...), nil
}
