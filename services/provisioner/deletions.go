package provisioner

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// stateAbsent is the desired state of a deleted account. Its link stays as the username's
// tombstone and is never converged to anything else again.
const stateAbsent = "absent"

// Disable, then delete: where a target's policy sets delete_after, each account a leaver case
// disables gets a deletion due that long after the case opened. The due time is stored, so
// the schedule survives restarts; the scheduler loop (schedule) issues due deletions as
// ordinary commands (desired state absent) that the worker applies with the connector's
// delete capability and confirms by reading the account back as not found. A rescinded
// termination within the grace period cancels the pending deletions and re-enables the
// accounts (rescind).

// scheduleDeletions records a pending deletion for each command's link whose target deletes
// after a grace period, and returns the deletion_scheduled events.
func (s *Service) scheduleDeletions(ctx context.Context, tx pgx.Tx, caseID string, from time.Time, cmds []events.Event) ([]events.Event, error) {
	var out []events.Event
	for _, c := range cmds {
		cmd, ok := c.Payload.(*eventsv1.ProvisionCommand)
		if !ok || cmd.GetOp() != eventsv1.ProvisionOp_PROVISION_OP_DISABLE {
			continue
		}
		t := s.targets[cmd.GetConnector()]
		if t == nil || t.Policy.DeleteAfter <= 0 {
			continue
		}
		due := from.Add(t.Policy.DeleteAfter)
		var d deletion
		err := tx.QueryRow(ctx, `INSERT INTO deletions (deletion_id, link_id, worker_id, connector, case_id, due_at)
			VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (link_id) WHERE status IN ('scheduled', 'issued') DO NOTHING
			RETURNING `+deletionColumns, events.NewID(), cmd.GetLinkId(), cmd.GetWorkerId(), cmd.GetConnector(), caseID, due).
			Scan(d.fields()...)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // already pending
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s.deletionEvent(ctx, tx, d))
	}
	return out, nil
}

type deletion struct {
	id, link, worker, conn, caseID, status, reason string
	due                                            time.Time
	completed                                      *time.Time
}

const deletionColumns = `deletion_id, link_id, worker_id, connector, case_id, status, reason, due_at, completed_at`

// prefixed qualifies each of a column list's names with p (a table alias and a dot).
func prefixed(p, columns string) string {
	cols := strings.Split(columns, ",")
	for i, c := range cols {
		cols[i] = p + strings.TrimSpace(c)
	}
	return strings.Join(cols, ", ")
}

func (d *deletion) fields() []any {
	return []any{&d.id, &d.link, &d.worker, &d.conn, &d.caseID, &d.status, &d.reason, &d.due, &d.completed}
}

// deletionEvent is the deletion's fact on tenure.case.deletion_<status>.<worker>.
func (s *Service) deletionEvent(ctx context.Context, tx pgx.Tx, d deletion) events.Event {
	var username string
	_ = tx.QueryRow(ctx, "SELECT username FROM links WHERE link_id = $1", d.link).Scan(&username)
	return s.deletionEventOf(d, username)
}

// deletionEventOf is deletionEvent when the link's username is at hand.
func (s *Service) deletionEventOf(d deletion, username string) events.Event {
	system := d.conn
	if t := s.targets[d.conn]; t != nil {
		system = t.System
	}
	return events.Event{ID: events.NewID(), Subject: events.Subject("tenure.case", "deletion_"+d.status, d.worker), Source: source, WorkerID: d.worker, Actor: "provisioner",
		Payload: &eventsv1.AccountDeletion{DeletionId: d.id, WorkerId: d.worker, Connector: d.conn, System: system, LinkId: d.link, Username: username,
			CaseId: d.caseID, Status: d.status, DueAt: timestamppb.New(d.due), At: timestamppb.Now(), Reason: d.reason}}
}

// maxDuePerRound bounds the deletions issued in one transaction; the rest wait a round.
const maxDuePerRound = 500

// issueDueDeletions turns deletions past their due time into delete commands. A deletion
// whose worker is no longer terminated, or whose account is no longer disabled (a rehire
// re-enabled it), is cancelled instead: only an account the leaver left disabled is deleted.
func (s *Service) issueDueDeletions(ctx context.Context) (int, error) {
	names := make([]string, 0, len(s.targets))
	for n := range s.targets {
		names = append(names, n)
	}
	var out []events.Event
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+prefixed("d.", deletionColumns)+`, coalesce(w.status, '')
			FROM deletions d LEFT JOIN workers w USING (worker_id)
			WHERE d.status = 'scheduled' AND d.due_at <= now() AND d.connector = ANY($1)
			ORDER BY d.due_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED`, names, maxDuePerRound)
		if err != nil {
			return err
		}
		type due struct {
			d            deletion
			workerStatus string
		}
		dues, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
			var x due
			return x, r.Scan(append(x.d.fields(), &x.workerStatus)...)
		})
		if err != nil {
			return err
		}
		for _, x := range dues {
			d := x.d
			cancel := ""
			var gen int64
			if x.workerStatus != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() {
				cancel = "worker is " + x.workerStatus + ", not terminated"
			} else {
				err := tx.QueryRow(ctx, `UPDATE links SET desired_state = 'absent', generation = generation + 1
					WHERE link_id = $1 AND desired_state = 'disabled' RETURNING generation`, d.link).Scan(&gen)
				switch {
				case errors.Is(err, pgx.ErrNoRows):
					cancel = "account is no longer disabled"
				case err != nil:
					return err
				}
			}
			if cancel != "" {
				if err := tx.QueryRow(ctx, `UPDATE deletions SET status = 'cancelled', completed_at = now(), reason = $2 WHERE deletion_id = $1
					RETURNING `+deletionColumns, d.id, cancel).Scan(d.fields()...); err != nil {
					return err
				}
				out = append(out, s.deletionEvent(ctx, tx, d))
				continue
			}
			if err := tx.QueryRow(ctx, `UPDATE deletions SET status = 'issued', issued_at = now(), generation = $2 WHERE deletion_id = $1
				RETURNING `+deletionColumns, d.id, gen).Scan(d.fields()...); err != nil {
				return err
			}
			out = append(out, s.deletionEvent(ctx, tx, d), deleteCommand(d.worker, d.conn, d.link, gen))
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err == nil && len(out) > 0 {
		s.relay.Poke()
	}
	return len(out), err
}

// deleteCommand asks the link's target to converge the account to absent. ProvisionOp has no
// delete: ENSURE converges the stored desired state, which is absent; the subject says delete.
func deleteCommand(worker, conn, link string, gen int64) events.Event {
	ev := command(worker, conn, link, gen, eventsv1.ProvisionOp_PROVISION_OP_ENSURE, "")
	ev.Subject = events.Subject("tenure.provision."+conn, "delete")
	return ev
}

// rescind undoes a worker's leaver case when HR rescinds the termination (intake publishes
// tenure.hr.rescind.<worker>, kind RESCIND, hr_event_type termination_rescinded, status
// active): pending deletions are cancelled, the accounts the case disabled that still have an
// active grant are re-enabled (their entitlements follow the worker's active grants, which
// the approval service restores as it re-converges the worker; an account whose grants were
// all revoked before the termination, by an access review say, stays disabled), and an open
// case closes as rescinded. Accounts already deleted stay deleted: their usernames are never
// reused.
func (s *Service) rescind(ctx context.Context, tx pgx.Tx, worker string) ([]events.Event, error) {
	var caseID, st string
	var opened, deadline time.Time
	var hrEvent string
	err := tx.QueryRow(ctx, `SELECT case_id, status, opened_at, deadline, hr_event_id FROM cases WHERE worker_id = $1
		ORDER BY opened_at DESC LIMIT 1 FOR UPDATE`, worker).Scan(&caseID, &st, &opened, &deadline, &hrEvent)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []events.Event
	rows, err := tx.Query(ctx, `UPDATE deletions SET status = 'cancelled', completed_at = now(), reason = 'termination rescinded'
		WHERE worker_id = $1 AND status = 'scheduled' RETURNING `+deletionColumns, worker)
	if err != nil {
		return nil, err
	}
	cancelled, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (deletion, error) {
		var d deletion
		return d, r.Scan(d.fields()...)
	})
	if err != nil {
		return nil, err
	}
	for _, d := range cancelled {
		out = append(out, s.deletionEvent(ctx, tx, d))
	}
	// Only the accounts tenure provisioned (one reconciliation found is never enabled), and
	// only those a grant still explains, as at the end of a leave (setWorkerLinks).
	rows, err = tx.Query(ctx, `UPDATE links l SET desired_state = 'enabled', generation = l.generation + 1,
		  desired_entitlements = (SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}') FROM link_grants g, unnest(g.entitlements) e
		    WHERE g.link_id = l.link_id AND g.active)
		FROM case_accounts a WHERE a.case_id = $1 AND a.link_id = l.link_id AND l.desired_state = 'disabled' AND l.origin = 'provisioned'
		  AND EXISTS (SELECT 1 FROM link_grants g WHERE g.link_id = l.link_id AND g.active)
		RETURNING l.link_id, l.connector, l.generation`, caseID)
	if err != nil {
		return nil, err
	}
	type re struct {
		id, conn string
		gen      int64
	}
	links, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (re, error) {
		var x re
		return x, r.Scan(&x.id, &x.conn, &x.gen)
	})
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(links))
	for i, x := range links {
		ids[i] = x.id
		out = append(out, command(worker, x.conn, x.id, x.gen, eventsv1.ProvisionOp_PROVISION_OP_ENSURE, ""))
	}
	// The case's tasks for the accounts re-enabled no longer ask for what the account should
	// be; a task to disable an account that stays disabled is still wanted.
	if err := supersedeStaleTasks(ctx, tx, ids, "termination rescinded"); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	if _, err := tx.Exec(ctx, `UPDATE cases SET rescinded_at = $2, status = CASE WHEN status = 'open' THEN 'rescinded' ELSE status END
		WHERE case_id = $1`, caseID, now); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "termination rescinded", "worker", worker, "case", caseID, "reenabled", len(links), "deletions_cancelled", len(cancelled))
	out = append(out, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.case", "rescinded", worker), Source: source, WorkerID: worker, Actor: "provisioner",
		Payload: &eventsv1.CaseEvent{CaseId: caseID, WorkerId: worker, Status: eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED, Accounts: int32(len(links)),
			OpenedAt: timestamppb.New(opened), CompletedAt: timestamppb.New(now), Deadline: timestamppb.New(deadline), HrEventId: hrEvent}})
	return out, nil
}
