package provisioner

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

const (
	stateEnabled  = "enabled"
	stateDisabled = "disabled"
)

// handleEvent converges desired state from HR events and access decisions, in one
// transaction with the inbox claim and the commands it emits.
func (s *Service) handleEvent(ctx context.Context, msg jetstream.Msg) error {
	return s.applyEvent(ctx, msg.Subject(), msg.Headers(), msg.Data())
}

// applyEvent is handleEvent on the parts of a message, so a dead-lettered event can be
// re-applied from its stored copy.
func (s *Service) applyEvent(ctx context.Context, subject string, headers nats.Header, data []byte) error {
	meta := events.MetaOf(headers)
	var out []events.Event
	var err error
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		first, err := pgstore.Claim(ctx, tx, durable, meta.ID, subject)
		if err != nil || !first {
			return err
		}
		switch {
		case strings.HasPrefix(subject, "tenure.hr."):
			var ev eventsv1.WorkerEvent
			if err := proto.Unmarshal(data, &ev); err != nil {
				return natsx.Permanent(fmt.Errorf("decode %s: %w", subject, err))
			}
			out, err = s.onHR(ctx, tx, meta, &ev)
		case strings.HasPrefix(subject, "tenure.access.grant."), strings.HasPrefix(subject, "tenure.access.revoke."):
			// Only grant and revoke carry AccessDecisions; the approval service's other
			// facts (policy_loaded, request_*, review_*) are for the ledger.
			var d eventsv1.AccessDecision
			if err := proto.Unmarshal(data, &d); err != nil {
				return natsx.Permanent(fmt.Errorf("decode %s: %w", subject, err))
			}
			out, err = s.onDecision(ctx, tx, &d)
		}
		if err != nil {
			return err
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err != nil {
		return err
	}
	if len(out) > 0 {
		s.relay.Poke()
	}
	return nil
}

func (s *Service) onHR(ctx context.Context, tx pgx.Tx, meta events.Meta, ev *eventsv1.WorkerEvent) ([]events.Event, error) {
	w := ev.GetWorker()
	if w.GetWorkerId() == "" {
		return nil, natsx.Permanent(errors.New("HR event without worker id"))
	}
	eff := meta.Time
	if ev.GetEffectiveTime() != nil {
		eff = ev.GetEffectiveTime().AsTime()
	}
	// The upsert locks the worker's row either way; a stale event (an older joiner after the
	// termination) updates nothing, returns no row, and changes nothing else. Neither does any
	// event but a leaver, a rehire or a rescind for a worker who has left: only a rehire or a
	// rescind brings a leaver back (docs/hr-events.md), so a re-sent hire, a job change or a
	// leave's end never re-activates them nor re-enables an account.
	err := tx.QueryRow(ctx, `INSERT INTO workers (worker_id, status, email, given_name, family_name, effective_time)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (worker_id) DO UPDATE SET status = $2, email = coalesce(nullif($3, ''), workers.email),
		  given_name = coalesce(nullif($4, ''), workers.given_name), family_name = coalesce(nullif($5, ''), workers.family_name),
		  effective_time = $6, updated_at = now()
		WHERE workers.effective_time <= $6 AND ($7 OR workers.status <> $8)
		RETURNING true`,
		w.GetWorkerId(), w.GetStatus().String(), w.GetEmail(), w.GetGivenName(), w.GetFamilyName(), eff, bringsLeaverBack(ev),
		eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String()).Scan(new(bool))
	if errors.Is(err, pgx.ErrNoRows) {
		s.log.InfoContext(ctx, "HR event changes nothing: older than the worker's record, or the worker has left and it is no rehire or rescind",
			"worker", w.GetWorkerId(), "kind", ev.GetKind().String(), "hr_event_type", ev.GetHrEventType(), "event", meta.ID)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	switch ev.GetKind() {
	case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER:
		return s.openCase(ctx, tx, w.GetWorkerId(), meta.ID, w.GetEmail())
	case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START:
		return s.setWorkerLinks(ctx, tx, w.GetWorkerId(), stateDisabled, "")
	case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER:
		// The worker is active again: a leave ended, or a hire or rehire found them on leave
		// (their accounts suspended). The accounts a grant explains come back; a joiner's new
		// access waits for its grants as always. A worker rehired while their leaver case
		// still verifies gets their access back when the case completes (releaseHeld), not
		// before.
		if w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
			return nil, nil
		}
		if open, err := lockOpenCase(ctx, tx, w.GetWorkerId()); err != nil || open {
			return nil, err
		}
		return s.setWorkerLinks(ctx, tx, w.GetWorkerId(), stateEnabled, "")
	case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_RESCIND:
		return s.rescind(ctx, tx, w.GetWorkerId())
	}
	return nil, nil
}

// bringsLeaverBack says whether ev may change the record of a worker who has left: a new
// termination, a rescind, or a rehire (a joiner whose HR type is "rehire").
func bringsLeaverBack(ev *eventsv1.WorkerEvent) bool {
	switch ev.GetKind() {
	case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER, eventsv1.WorkerEventKind_WORKER_EVENT_KIND_RESCIND:
		return true
	case eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER:
		return ev.GetHrEventType() == "rehire"
	}
	return false
}

// lockOpenCase says whether the worker has an open leaver case, and holds it (FOR SHARE)
// until tx ends. While a case is open no account of the worker is enabled: the case's
// tasks ask for every account disabled, and a link moved on to enabled would leave its task
// pending for ever. The lock orders this transaction with the one completing the case: either
// that one sees what this one held back and releases it (releaseHeld), or this one sees the
// case completed and enables at once.
func lockOpenCase(ctx context.Context, tx pgx.Tx, worker string) (bool, error) {
	err := tx.QueryRow(ctx, "SELECT 1 FROM cases WHERE worker_id = $1 AND status = 'open' FOR SHARE", worker).Scan(new(int))
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// releaseHeldSQL re-enables, once the leaver case of a worker who came back (a rehire while
// the case was verifying) has completed, the worker's accounts a grant explains that
// waited for the case: disabled, tenure-provisioned, with an active grant, the worker
// active and no case open. It returns each link re-enabled, for its ensure command.
const releaseHeldSQL = `UPDATE links l SET desired_state = 'enabled', generation = l.generation + 1,
	  desired_entitlements = (SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}') FROM link_grants g, unnest(g.entitlements) e
	    WHERE g.link_id = l.link_id AND g.active)
	FROM workers w
	WHERE w.worker_id = $1 AND l.worker_id = w.worker_id AND w.status = 'WORKER_STATUS_ACTIVE'
	  AND l.desired_state = 'disabled' AND l.origin = 'provisioned'
	  AND EXISTS (SELECT 1 FROM link_grants g WHERE g.link_id = l.link_id AND g.active)
	  AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.worker_id = w.worker_id AND c.status = 'open')
	RETURNING l.link_id, l.connector, l.generation`

// releaseHeld queues releaseHeldSQL for worker on b; done gets the ensure commands.
func releaseHeld(b *pgx.Batch, worker string, done func([]events.Event)) {
	b.Queue(releaseHeldSQL, worker).Query(func(rows pgx.Rows) error {
		var out []events.Event
		var id, conn string
		var gen int64
		_, err := pgx.ForEachRow(rows, []any{&id, &conn, &gen}, func() error {
			out = append(out, command(worker, conn, id, gen, eventsv1.ProvisionOp_PROVISION_OP_ENSURE, ""))
			return nil
		})
		done(out)
		return err
	})
}

// setWorkerLinks suspends or restores every link of a worker that has active grants
// (leave of absence: disable, keep links).
func (s *Service) setWorkerLinks(ctx context.Context, tx pgx.Tx, worker, state, caseID string) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `UPDATE links SET desired_state = $2, generation = generation + 1
		WHERE worker_id = $1 AND desired_state <> 'absent' AND ($2 = 'disabled' OR (desired_state <> 'enabled'
		  AND EXISTS (SELECT 1 FROM link_grants g WHERE g.link_id = links.link_id AND g.active)))
		RETURNING link_id, connector, generation`, worker, state)
	if err != nil {
		return nil, err
	}
	type l struct {
		id, conn string
		gen      int64
	}
	links, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (l, error) {
		var x l
		return x, r.Scan(&x.id, &x.conn, &x.gen)
	})
	if err != nil {
		return nil, err
	}
	why := "leave of absence ended"
	switch {
	case caseID != "":
		why = "leaver case " + caseID
	case state == stateDisabled:
		why = "leave of absence started"
	}
	var ids []string // only people's tasks (manual targets) can be stale
	for _, x := range links {
		if t := s.targets[x.conn]; t != nil && attested(t) {
			ids = append(ids, x.id)
		}
	}
	if err := supersedeStaleTasks(ctx, tx, ids, why); err != nil {
		return nil, err
	}
	op := eventsv1.ProvisionOp_PROVISION_OP_ENSURE
	if state == stateDisabled {
		op = eventsv1.ProvisionOp_PROVISION_OP_DISABLE
	}
	var out []events.Event
	for _, x := range links {
		out = append(out, command(worker, x.conn, x.id, x.gen, op, caseID))
	}
	return out, nil
}

func command(worker, conn, link string, gen int64, op eventsv1.ProvisionOp, caseID string) events.Event {
	opTok := "ensure"
	if op == eventsv1.ProvisionOp_PROVISION_OP_DISABLE {
		opTok = "disable"
	}
	id := events.NewID()
	return events.Event{
		ID: id, Subject: events.Subject("tenure.provision."+conn, opTok), Source: source, WorkerID: worker, Actor: "provisioner",
		Payload: &eventsv1.ProvisionCommand{CommandId: id, Connector: conn, Op: op, WorkerId: worker, LinkId: link, Generation: gen, CaseId: caseID},
	}
}

// openCase opens (or extends) the worker's leaver case: every link gets desired state
// disabled and a task, and the case completes when every task is verified. Each account has
// its own deadline (accountDeadline); the case's deadline is the latest of them.
func (s *Service) openCase(ctx context.Context, tx pgx.Tx, worker, hrEventID, email string) ([]events.Event, error) {
	now := time.Now().UTC()
	var caseID string
	var opened, deadline time.Time
	err := tx.QueryRow(ctx, "SELECT case_id, opened_at, deadline FROM cases WHERE worker_id = $1 AND status = 'open' FOR UPDATE", worker).Scan(&caseID, &opened, &deadline)
	newCase := errors.Is(err, pgx.ErrNoRows)
	if err != nil && !newCase {
		return nil, err
	}
	if newCase {
		caseID = events.NewID()
		opened, deadline = now, now.Add(s.cfg.CaseDeadline)
	}
	out, err := s.setWorkerLinks(ctx, tx, worker, stateDisabled, caseID)
	if err != nil {
		return nil, err
	}
	cmds := len(out)
	accts := make([]caseAccount, cmds)
	for i, c := range out {
		cmd := c.Payload.(*eventsv1.ProvisionCommand)
		accts[i] = caseAccount{link: cmd.LinkId, gen: cmd.Generation, conn: cmd.Connector}
	}
	switch {
	case newCase:
		// A new case is written with its final deadline: its accounts' latest.
		due, latest := s.dueAt(now, accts)
		if cmds > 0 {
			deadline = latest.Truncate(time.Microsecond) // as PostgreSQL stores it
		}
		if _, err := tx.Exec(ctx, "INSERT INTO cases (case_id, worker_id, hr_event_id, status, opened_at, deadline) VALUES ($1, $2, $3, 'open', $4, $5)",
			caseID, worker, hrEventID, opened, deadline); err != nil {
			return nil, err
		}
		if err := insertCaseAccounts(ctx, tx, caseID, accts, due); err != nil {
			return nil, err
		}
	case cmds > 0:
		if _, deadline, err = s.addToCase(ctx, tx, caseID, now, accts...); err != nil {
			return nil, err
		}
	}
	ce := &eventsv1.CaseEvent{CaseId: caseID, WorkerId: worker, Status: eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN, Accounts: int32(len(out)),
		OpenedAt: timestamppb.New(opened), Deadline: timestamppb.New(deadline), HrEventId: hrEventID}
	out = append(out,
		events.Event{ID: events.NewID(), Subject: events.Subject("tenure.case", "opened", worker), Source: source, WorkerID: worker, Actor: "provisioner", Payload: ce},
		events.Event{ID: events.NewID(), Subject: events.Subject("tenure.revocation", "worker_terminated", worker), Source: source, WorkerID: worker, Actor: "provisioner",
			Payload: &eventsv1.Revocation{RevocationId: events.NewID(), Kind: eventsv1.RevocationKind_REVOCATION_KIND_WORKER_TERMINATED, WorkerId: worker, Email: email, CaseId: caseID, OccurredAt: timestamppb.New(now)}},
	)
	dels, err := s.scheduleDeletions(ctx, tx, caseID, now, out)
	if err != nil {
		return nil, err
	}
	out = append(out, dels...)
	if cmds > 0 {
		return out, nil // every account just got a pending task
	}
	done, err := s.maybeComplete(ctx, tx, caseID)
	if err != nil {
		return nil, err
	}
	return append(out, done...), nil
}

// caseAccount is a link joining a leaver case at the generation of its disable command.
type caseAccount struct {
	link, conn string
	gen        int64
}

// addToCase puts accounts into an open case, each due at now plus its target's deadline, and
// moves the case's deadline to its latest account's. An account already in the case (a
// repeated leaver event) takes the new generation and is pending again but keeps its
// deadline. It returns when the case opened and its deadline.
func (s *Service) addToCase(ctx context.Context, tx pgx.Tx, caseID string, now time.Time, accts ...caseAccount) (opened, deadline time.Time, err error) {
	due, _ := s.dueAt(now, accts)
	if err := insertCaseAccounts(ctx, tx, caseID, accts, due); err != nil {
		return opened, deadline, err
	}
	err = tx.QueryRow(ctx, `UPDATE cases c SET deadline = (SELECT max(a.deadline) FROM case_accounts a WHERE a.case_id = c.case_id)
		WHERE c.case_id = $1 RETURNING c.opened_at, c.deadline`, caseID).Scan(&opened, &deadline)
	return opened, deadline, err
}

// dueAt is when each account joining a case at now is due (accountDeadline), and the
// latest of them (now when there are none).
func (s *Service) dueAt(now time.Time, accts []caseAccount) (due []time.Time, latest time.Time) {
	due, latest = make([]time.Time, len(accts)), now
	for i, a := range accts {
		due[i] = now.Add(s.accountDeadline(a.conn))
		if due[i].After(latest) {
			latest = due[i]
		}
	}
	return due, latest
}

// insertCaseAccounts writes addToCase's tasks, each due at its due time, without moving the
// case's deadline.
func insertCaseAccounts(ctx context.Context, tx pgx.Tx, caseID string, accts []caseAccount, due []time.Time) error {
	if len(accts) == 0 {
		return nil
	}
	links, gens := make([]string, len(accts)), make([]int64, len(accts))
	for i, a := range accts {
		links[i], gens[i] = a.link, a.gen
	}
	_, err := tx.Exec(ctx, `INSERT INTO case_accounts (case_id, link_id, generation, deadline)
		SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::timestamptz[])
		ON CONFLICT (case_id, link_id) DO UPDATE SET generation = excluded.generation, status = 'pending'`, caseID, links, gens, due)
	return err
}

// accountDeadline is how long a leaver case's account in the target may take to be verified
// before it is overdue: a manual target's task deadline (a person needs longer than a
// connector; default 1 hour), or the provisioner's case deadline (default 5 minutes).
func (s *Service) accountDeadline(conn string) time.Duration {
	if t := s.targets[conn]; t != nil && t.taskDeadline > 0 {
		return t.taskDeadline
	}
	return s.cfg.CaseDeadline
}

// maybeComplete completes an open case whose accounts are all verified. The caller holds the
// case row lock, so two tasks finishing at once cannot both miss the last one.
func (s *Service) maybeComplete(ctx context.Context, tx pgx.Tx, caseID string) ([]events.Event, error) {
	var worker, hrEvent, status string
	var opened, deadline time.Time
	var total, verified int32
	err := tx.QueryRow(ctx, `SELECT c.worker_id, c.hr_event_id, c.status, c.opened_at, c.deadline,
		  (SELECT count(*) FROM case_accounts a WHERE a.case_id = c.case_id),
		  (SELECT count(*) FROM case_accounts a WHERE a.case_id = c.case_id AND a.status = 'verified')
		FROM cases c WHERE c.case_id = $1`, caseID).Scan(&worker, &hrEvent, &status, &opened, &deadline, &total, &verified)
	if err != nil {
		return nil, err
	}
	if status != "open" || verified < total {
		return nil, nil
	}
	now := time.Now().UTC()
	if _, err := tx.Exec(ctx, "UPDATE cases SET status = 'completed', completed_at = $2 WHERE case_id = $1", caseID, now); err != nil {
		return nil, err
	}
	var email string
	tx.QueryRow(ctx, "SELECT email FROM workers WHERE worker_id = $1", worker).Scan(&email)
	return caseCompleted(caseID, worker, email, hrEvent, opened, deadline, now, total, verified), nil
}

// caseCompleted are a completed case's events: tenure.case.completed and the
// case_completed revocation.
func caseCompleted(caseID, worker, email, hrEvent string, opened, deadline, now time.Time, total, verified int32) []events.Event {
	ce := &eventsv1.CaseEvent{CaseId: caseID, WorkerId: worker, Status: eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED, Accounts: total, Verified: verified,
		OpenedAt: timestamppb.New(opened), CompletedAt: timestamppb.New(now), Deadline: timestamppb.New(deadline), HrEventId: hrEvent}
	return []events.Event{
		{ID: events.NewID(), Subject: events.Subject("tenure.case", "completed", worker), Source: source, WorkerID: worker, Actor: "provisioner", Payload: ce},
		{ID: events.NewID(), Subject: events.Subject("tenure.revocation", "case_completed", worker), Source: source, WorkerID: worker, Actor: "provisioner",
			Payload: &eventsv1.Revocation{RevocationId: events.NewID(), Kind: eventsv1.RevocationKind_REVOCATION_KIND_CASE_COMPLETED, WorkerId: worker, Email: email, CaseId: caseID, OccurredAt: timestamppb.New(now), Verified: true}},
	}
}

func (s *Service) onDecision(ctx context.Context, tx pgx.Tx, d *eventsv1.AccessDecision) ([]events.Event, error) {
	worker := d.GetWorkerId()
	if _, ok := s.targets[d.GetConnector()]; !ok {
		return nil, natsx.Permanent(fmt.Errorf("decision %s names connector %q, which this provisioner does not run", d.GetDecisionId(), d.GetConnector()))
	}
	var status, email, given, family string
	err := tx.QueryRow(ctx, "SELECT status, email, given_name, family_name FROM workers WHERE worker_id = $1 FOR UPDATE", worker).Scan(&status, &email, &given, &family)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	terminated := status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String()
	// A worker on leave keeps every account disabled: a grant is recorded and takes effect
	// when the leave ends (setWorkerLinks), and a revoke never re-enables an account. So does
	// a worker whose leaver case is still open (rehired meanwhile): a grant takes effect when
	// the case completes (releaseHeld).
	held := status == eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE.String()
	if !terminated && !held && status != "" {
		if held, err = lockOpenCase(ctx, tx, worker); err != nil {
			return nil, err
		}
	}
	switch d.GetKind() {
	case eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT:
		if terminated {
			// Level-triggered: a grant that arrives after the termination never re-enables.
			s.log.WarnContext(ctx, "ignoring grant for a terminated worker", "worker", worker, "grant", d.GetGrantId())
			return nil, nil
		}
		linkID, err := s.linkFor(ctx, tx, worker, d.GetConnector(), email, given, family)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO link_grants (grant_id, link_id, entitlements) VALUES ($1, $2, $3)
			ON CONFLICT (grant_id) DO NOTHING`, d.GetGrantId(), linkID, nonNil(d.GetEntitlements())); err != nil {
			return nil, err
		}
		state := stateEnabled
		if held {
			state = stateDisabled
		}
		return s.reconverge(ctx, tx, worker, linkID, state, "grant "+d.GetGrantId())
	case eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE:
		var linkID string
		err := tx.QueryRow(ctx, "UPDATE link_grants SET active = false, updated_at = now(), revoke_reason = $2 WHERE grant_id = $1 AND active RETURNING link_id", d.GetGrantId(), d.GetReason()).Scan(&linkID)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var remaining int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM link_grants WHERE link_id = $1 AND active", linkID).Scan(&remaining); err != nil {
			return nil, err
		}
		state := stateEnabled
		if remaining == 0 || terminated || held {
			state = stateDisabled
		}
		out, err := s.reconverge(ctx, tx, worker, linkID, state, "revoke of grant "+d.GetGrantId())
		if err != nil || len(out) > 0 {
			return out, err
		}
		// Nothing changes in the target, so no command's read-back will report this revoke.
		return s.confirmUnchanged(ctx, tx, linkID, d.GetGrantId())
	}
	return nil, natsx.Permanent(fmt.Errorf("unknown decision kind %v", d.GetKind()))
}

// supersedeLinkTasks is supersedeStaleTasks for one link; only a manual target's links have
// tasks (people's work), so others cost no statement.
func (s *Service) supersedeLinkTasks(ctx context.Context, tx pgx.Tx, conn, linkID, why string) error {
	if t := s.targets[conn]; t == nil || !attested(t) {
		return nil
	}
	return supersedeStaleTasks(ctx, tx, []string{linkID}, why)
}

// reconverge recomputes a link's desired state from its active grants and, if it changed,
// bumps the generation and emits a command. Open tasks that no longer ask for the link's
// desired state are superseded, why being the decision.
func (s *Service) reconverge(ctx context.Context, tx pgx.Tx, worker, linkID, state, why string) ([]events.Event, error) {
	var conn, curState string
	var curEnts []string
	var gen int64
	if err := tx.QueryRow(ctx, "SELECT connector, desired_state, desired_entitlements, generation FROM links WHERE link_id = $1 FOR UPDATE", linkID).Scan(&conn, &curState, &curEnts, &gen); err != nil {
		return nil, err
	}
	if curState == stateAbsent {
		// A deleted account stays deleted; its username is a tombstone.
		return nil, nil
	}
	var ents []string
	if err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}') FROM link_grants g, unnest(g.entitlements) e
		WHERE g.link_id = $1 AND g.active`, linkID).Scan(&ents); err != nil {
		return nil, err
	}
	// A disabled account holds only what its grants explain: an entitlement no grant explains
	// any more is revoked in the target, while one granted during a leave waits for the
	// enable. With the last command's read-back current, an ensure (no new disable, no
	// revocation events, the leaver case's evidence untouched) narrows it now; with a command
	// under way, that command narrows it, or narrowDisabled does after it.
	narrows := slices.ContainsFunc(curEnts, func(e string) bool { return !slices.Contains(ents, e) })
	if state == stateDisabled && curState == stateDisabled && gen > 0 && narrows {
		var observedGen int64
		if err := tx.QueryRow(ctx, "SELECT observed_generation FROM links WHERE link_id = $1", linkID).Scan(&observedGen); err != nil {
			return nil, err
		}
		if observedGen != gen {
			_, err := tx.Exec(ctx, "UPDATE links SET desired_entitlements = $2 WHERE link_id = $1", linkID, ents)
			return nil, err
		}
		if err := tx.QueryRow(ctx, `UPDATE links SET desired_entitlements = $2, generation = generation + 1 WHERE link_id = $1 RETURNING generation`,
			linkID, ents).Scan(&gen); err != nil {
			return nil, err
		}
		if err := s.supersedeLinkTasks(ctx, tx, conn, linkID, why); err != nil {
			return nil, err
		}
		return []events.Event{command(worker, conn, linkID, gen, eventsv1.ProvisionOp_PROVISION_OP_ENSURE, "")}, nil
	}
	if (state == curState && (slices.Equal(ents, curEnts) || state == stateDisabled) && gen > 0) || (gen == 0 && state == stateDisabled) {
		// Nothing to do in the target. A link never provisioned (a grant while the worker is
		// on leave) has no account to disable: it is created when the link is enabled.
		if !slices.Equal(ents, curEnts) || state != curState {
			if _, err := tx.Exec(ctx, "UPDATE links SET desired_state = $2, desired_entitlements = $3 WHERE link_id = $1", linkID, state, ents); err != nil {
				return nil, err
			}
		}
		return nil, s.supersedeLinkTasks(ctx, tx, conn, linkID, why)
	}
	if err := tx.QueryRow(ctx, `UPDATE links SET desired_state = $2, desired_entitlements = $3, generation = generation + 1
		WHERE link_id = $1 RETURNING generation`, linkID, state, ents).Scan(&gen); err != nil {
		return nil, err
	}
	if err := s.supersedeLinkTasks(ctx, tx, conn, linkID, why); err != nil {
		return nil, err
	}
	op := eventsv1.ProvisionOp_PROVISION_OP_ENSURE
	if state == stateDisabled {
		op = eventsv1.ProvisionOp_PROVISION_OP_DISABLE
	}
	return []events.Event{command(worker, conn, linkID, gen, op, "")}, nil
}

var unsafeUser = regexp.MustCompile(`[^a-z0-9._-]+`)

// linkFor returns the worker's tenure-managed link in a target, creating it with a username
// that was never used in that target before (links are never deleted, so they are the
// tombstones). Accounts found by reconciliation are never adopted for grants: an orphaned
// admin account must not become the one tenure manages; it is only ever disabled.
func (s *Service) linkFor(ctx context.Context, tx pgx.Tx, worker, conn, email, given, family string) (string, error) {
	var id string
	// A deleted account is never recreated: a rehired worker gets a new link and a username
	// nobody had before.
	err := tx.QueryRow(ctx, `SELECT link_id FROM links WHERE worker_id = $1 AND connector = $2 AND origin = 'provisioned' AND desired_state <> 'absent'
		ORDER BY created_at LIMIT 1`, worker, conn).Scan(&id)
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return id, err
	}
	// The username is only checked against tenure's links here: the target is checked when
	// the account is created (Service.freshUsername), and an account the target already has
	// under the name that is not this link's is never adopted.
	base := usernameBase(worker, email, given, family)
	id = events.NewID()
	for n := 1; ; n++ {
		tag, err := tx.Exec(ctx, `INSERT INTO links (link_id, worker_id, connector, username, desired_state, generation)
			VALUES ($1, $2, $3, $4, 'enabled', 0) ON CONFLICT (connector, username) DO NOTHING`, id, worker, conn, usernameCandidate(base, n))
		if err != nil {
			return "", err
		}
		if tag.RowsAffected() == 1 {
			return id, nil
		}
		if n > maxUsernames {
			return "", fmt.Errorf("no free username for %s in %s", base, conn)
		}
	}
}

// maxUsernames is how many usernames of one base are tried.
const maxUsernames = 1000

// usernameBase is a worker's username before any suffix: the email's local part, else
// given.family, else the worker id; lower case, safe characters, at most 40 bytes.
func usernameBase(worker, email, given, family string) string {
	base := ""
	if local, _, ok := strings.Cut(email, "@"); ok {
		base = local
	} else if given != "" || family != "" {
		base = given + "." + family
	} else {
		base = worker
	}
	base = strings.Trim(unsafeUser.ReplaceAllString(strings.ToLower(base), "_"), "._-")
	if base == "" {
		base = "w" + strings.ToLower(unsafeUser.ReplaceAllString(worker, ""))
	}
	if len(base) > 40 {
		base = base[:40]
	}
	return base
}

// usernameCandidate is the n-th username tried for base: base, base2, base3, ...
func usernameCandidate(base string, n int) string {
	if n > 1 {
		return base + strconv.Itoa(n)
	}
	return base
}

// errLinkedElsewhere: the account is already linked to another worker.
var errLinkedElsewhere = errors.New("linked to another worker")

// linkAccount records an account that exists in a target for a worker (found by
// reconciliation, or named by an operator through LinkAccount): by and reason go to the
// ledger in a tenure.reconcile.linked event. If the worker has an open leaver case, the
// account joins it and is disabled. It returns the link and the case it joined, if any.
func (s *Service) linkAccount(ctx context.Context, worker, conn, username, accountID, by, reason string) (string, string, error) {
	t, ok := s.targets[conn]
	if !ok {
		return "", "", fmt.Errorf("unknown target %q", conn)
	}
	id := events.NewID()
	var out []events.Event
	var caseID string
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		// The worker's row first: a termination applied at the same moment waits for this
		// link (and then disables it with the rest), or this sees the worker terminated.
		var status string
		if err := tx.QueryRow(ctx, "SELECT status FROM workers WHERE worker_id = $1 FOR UPDATE", worker).Scan(&status); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		// An account already linked keeps its worker: re-linking it to the same worker
		// refreshes its id; to another worker it is refused. An orphan's link without a
		// worker (disable_orphans) takes the worker, and keeps its desired state.
		var owner string
		err := tx.QueryRow(ctx, `INSERT INTO links (link_id, worker_id, connector, username, account_id, origin, desired_state, observed_state)
			VALUES ($1, $2, $3, $4, $5, 'reconciled', 'enabled', 'enabled')
			ON CONFLICT (connector, username) DO UPDATE SET
			  worker_id = CASE WHEN links.worker_id = '' THEN excluded.worker_id ELSE links.worker_id END,
			  account_id = CASE WHEN links.worker_id IN ('', excluded.worker_id) AND excluded.account_id <> ''
			    THEN excluded.account_id ELSE links.account_id END
			RETURNING link_id, worker_id`, id, worker, conn, username, accountID).Scan(&id, &owner)
		if err != nil {
			return err
		}
		if owner != worker {
			return fmt.Errorf("account %q in %s: %w %q", username, conn, errLinkedElsewhere, owner)
		}
		out = append(out, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.reconcile.linked", worker), Source: source, WorkerID: worker, Actor: by,
			Payload: &eventsv1.AccountLinked{LinkId: id, WorkerId: worker, Connector: conn, System: t.System, Username: username, AccountId: accountID,
				LinkedBy: by, Reason: reason, LinkedAt: timestamppb.Now()}})
		if err := tx.QueryRow(ctx, "SELECT case_id FROM cases WHERE worker_id = $1 AND status = 'open' FOR UPDATE", worker).Scan(&caseID); err == nil {
			out[0].Payload.(*eventsv1.AccountLinked).CaseId = caseID
			var gen int64
			if err := tx.QueryRow(ctx, "UPDATE links SET desired_state = 'disabled', generation = generation + 1 WHERE link_id = $1 RETURNING generation", id).Scan(&gen); err != nil {
				return err
			}
			if err := s.supersedeLinkTasks(ctx, tx, conn, id, "leaver case "+caseID); err != nil {
				return err
			}
			// Found after the case opened: the account's deadline runs from now.
			opened, _, err := s.addToCase(ctx, tx, caseID, time.Now().UTC(), caseAccount{link: id, gen: gen, conn: conn})
			if err != nil {
				return err
			}
			out = append(out, command(worker, conn, id, gen, eventsv1.ProvisionOp_PROVISION_OP_DISABLE, caseID))
			dels, err := s.scheduleDeletions(ctx, tx, caseID, opened, out)
			if err != nil {
				return err
			}
			out = append(out, dels...)
		} else if errors.Is(err, pgx.ErrNoRows) {
			caseID = ""
			if status == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() || status == eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE.String() {
				// A leaver whose case is done, or a worker on leave: the account found is
				// disabled like the worker's others.
				var gen int64
				err := tx.QueryRow(ctx, `UPDATE links SET desired_state = 'disabled', generation = generation + 1
					WHERE link_id = $1 AND desired_state = 'enabled' RETURNING generation`, id).Scan(&gen)
				if err == nil {
					out = append(out, command(worker, conn, id, gen, eventsv1.ProvisionOp_PROVISION_OP_DISABLE, ""))
				} else if !errors.Is(err, pgx.ErrNoRows) {
					return err
				}
			}
		} else {
			return err
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err != nil {
		return "", "", err
	}
	s.relay.Poke()
	return id, caseID, nil
}
