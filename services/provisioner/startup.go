package provisioner

import (
	"context"
	"fmt"
	"strconv"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// After a crash, the commands the provisioner held come back from JetStream only when their
// ack deadline (ackWait, a minute) has passed: a leaver's disables would wait that long. So
// at start it is level-triggered: every link whose desired state is not verified at its
// generation gets a command now, through the outbox like any other. The work stays once per
// generation: a re-drive command, and a redelivered command, first look whether the link is
// already verified at their generation (by the other one) and then stop.

// redriveNS makes re-drive command ids UUIDs of version 5 (name-based), which tells them
// apart from the version 7 ids every other command has.
var redriveNS = uuid.MustParse("6f1c3c2e-5b7a-4d0e-9a61-2f4e8c1d7b30")

func redriveID(linkID string, gen int64, run string) string {
	return uuid.NewSHA1(redriveNS, []byte(linkID+"/"+strconv.FormatInt(gen, 10)+"/"+run)).String()
}

func isRedrive(cmd *eventsv1.ProvisionCommand) bool {
	id, err := uuid.Parse(cmd.GetCommandId())
	return err == nil && id.Version() == 5
}

// redriveAtStart issues a command for every link of this provisioner's targets whose desired
// state is not verified, except where the work waits for someone: an open dead letter (an
// operator re-drives it), a manual target's task, a case account given up on.
func (s *Service) redriveAtStart(ctx context.Context) (int, error) {
	var names []string
	for name, t := range s.targets {
		if !attested(t) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return 0, nil
	}
	run := strconv.FormatInt(s.started.UnixNano(), 10)
	var n int
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT l.link_id, l.worker_id, l.connector, l.desired_state, l.generation,
			  coalesce((SELECT a.case_id FROM case_accounts a JOIN cases c USING (case_id)
			    WHERE a.link_id = l.link_id AND c.status = 'open' ORDER BY c.opened_at DESC LIMIT 1), '')
			FROM links l
			WHERE l.observed_generation < l.generation AND l.connector = ANY($1)
			  AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.link_id = l.link_id AND d.status = 'open')
			  AND NOT EXISTS (SELECT 1 FROM case_accounts a JOIN cases c USING (case_id)
			    WHERE a.link_id = l.link_id AND c.status = 'open' AND a.status IN ('failed', 'waiting'))
			ORDER BY l.link_id`, names)
		if err != nil {
			return err
		}
		var cmds []events.Event
		for rows.Next() {
			var link, worker, conn, desired, caseID string
			var gen int64
			if err := rows.Scan(&link, &worker, &conn, &desired, &gen, &caseID); err != nil {
				return err
			}
			e := command(worker, conn, link, gen, opFor(desired), caseID)
			id := redriveID(link, gen, run)
			e.ID, e.Payload.(*eventsv1.ProvisionCommand).CommandId = id, id
			cmds = append(cmds, e)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		n = len(cmds)
		return pgstore.Enqueue(ctx, tx, cmds...)
	})
	if err != nil {
		return 0, fmt.Errorf("re-drive at start: %w", err)
	}
	if n > 0 {
		s.relay.Poke()
	}
	return n, nil
}

// continuing says another run of the command's generation may have worked on it: a
// redelivery (the last holder crashed or stopped), a start-up re-drive, or a command stored
// before this process started (the re-drive may carry its generation too). Commands issued
// while the process runs, the hot path, need no look-up.
func (s *Service) continuing(cmd *eventsv1.ProvisionCommand, msg jetstream.Msg) bool {
	if isRedrive(cmd) {
		return true
	}
	md, err := msg.Metadata()
	return err == nil && (md.NumDelivered > 1 || md.Timestamp.Before(s.started))
}

// doneAlready says a continuing command's link is already verified at its generation (the
// re-drive or the redelivered command did it), so it has nothing left to do. Called in the
// link's lane, so the other one has finished.
func (s *Service) doneAlready(ctx context.Context, cmd *eventsv1.ProvisionCommand, msg jetstream.Msg) (bool, error) {
	if !s.continuing(cmd, msg) {
		return false, nil
	}
	var done bool
	err := s.pool.QueryRow(ctx, "SELECT observed_generation >= $2 AND verified_at IS NOT NULL FROM links WHERE link_id = $1",
		cmd.GetLinkId(), cmd.GetGeneration()).Scan(&done)
	if done {
		s.log.DebugContext(ctx, "command already done at its generation", "command", cmd.GetCommandId(), "link", cmd.GetLinkId(), "generation", cmd.GetGeneration())
	}
	return done, err
}

// attemptsUsed is how many attempts earlier runs of a continuing command's generation failed.
func (s *Service) attemptsUsed(ctx context.Context, cmd *eventsv1.ProvisionCommand, msg jetstream.Msg) (int, error) {
	if !s.continuing(cmd, msg) {
		return 0, nil
	}
	var n int
	err := s.pool.QueryRow(ctx, "SELECT coalesce((SELECT failures FROM attempt_budget WHERE link_id = $1 AND generation = $2), 0)",
		cmd.GetLinkId(), cmd.GetGeneration()).Scan(&n)
	return n, err
}

// countFailure records a failed attempt against the generation's budget (and forgets the
// link's older generations).
func (s *Service) countFailure(ctx context.Context, cmd *eventsv1.ProvisionCommand) error {
	_, err := s.pool.Exec(ctx, `WITH old AS (DELETE FROM attempt_budget WHERE link_id = $1 AND generation < $2)
		INSERT INTO attempt_budget (link_id, generation, failures) VALUES ($1, $2, 1)
		ON CONFLICT (link_id, generation) DO UPDATE SET failures = attempt_budget.failures + 1`, cmd.GetLinkId(), cmd.GetGeneration())
	return err
}

// resetBudget clears a link's attempt budget: an operator asked for a fresh try.
func resetBudget(ctx context.Context, tx pgx.Tx, linkID string) error {
	_, err := tx.Exec(ctx, "DELETE FROM attempt_budget WHERE link_id = $1", linkID)
	return err
}
