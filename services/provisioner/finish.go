package provisioner

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// Group commit of finished commands.
//
// A command that ends verified (or superseded) is recorded in one transaction with its inbox
// claim: the link's observed state, the case task, the result and revocation events, and the
// case's completion when it was the last account. A command that changed the target but
// whose link moved on to a newer generation meanwhile is recorded as superseded and
// re-converges the link (reconvergeStale). A mass termination finishes hundreds of
// commands a second, and a transaction per command spent most of its time on round trips
// (about sixteen). So commands that finish while a batch is being written wait in a queue,
// and the next batch takes them all (up to maxFinishGroup): one transaction, six round trips
// (begin; the inbox claims; the cases' locks; every command's updates, pipelined;
// completions and events; commit). A lone command waits for nobody: a batch starts at once
// while fewer than maxFinishBatches are in flight.
//
// Each command keeps the guarantees a transaction of its own gave it:
//   - a command claimed before (a redelivery) changes nothing and is acked;
//   - the worker's open case is locked before its tasks are marked, so the command that
//     verifies a case's last account sees all the others and completes it once;
//   - the links are locked (after the cases, in link order) before the statement that
//     records the read-backs takes its snapshot, so a revoke committed meanwhile is either
//     seen by it or sees its read-back: a revoke is never left unconfirmed;
//   - batches in flight never share a worker, and a batch locks its workers' cases in worker
//     order, so batches do not deadlock on each other;
//   - if the batch fails as a whole (a deadlock with another transaction, say), each command
//     is recorded again in a transaction of its own and gets its own answer.
const (
	maxFinishGroup   = 64
	maxFinishBatches = 2
)

// finishItem is one command's outcome waiting for its batch.
type finishItem struct {
	ctx     context.Context
	meta    events.Meta
	subject string
	cmd     *eventsv1.ProvisionCommand
	l       link
	acct    *connector.Account
	outcome eventsv1.ProvisionOutcome
	attempt int
	revoked revocations
	// touched: the command may have changed the target (a verified one always did).
	touched bool

	err  error
	done chan struct{}

	// Filled in by the batch.
	current       bool // the link was still at the command's generation: the read-back counts
	leaverUndone  bool // the worker's latest leaver case was rescinded
	stale         bool // the command touched the target, but its link moved on: superseded
	reissued      []events.Event
	activeGrants  []string
	revokedGrants []string
	confirmed     []revokedGrant // revoked grants this read-back is the first to reflect
	deleted       []deletion
	cases         []string // open cases whose task for this link it verified
}

// finisher queues finished commands and records them in batches.
type finisher struct {
	s       *Service
	mu      sync.Mutex
	queue   []*finishItem
	running int
	busy    map[string]bool // workers of the batches in flight
}

// finish records a verified (or superseded) command, in a group commit, and returns when it
// is committed (or failed). acct is the read-back (nil if there is none); touched says the
// command may have changed the target.
func (s *Service) finish(ctx context.Context, meta events.Meta, subject string, cmd *eventsv1.ProvisionCommand, l link, acct *connector.Account,
	outcome eventsv1.ProvisionOutcome, attempt int, revoked revocations, touched bool) error {
	it := &finishItem{ctx: ctx, meta: meta, subject: subject, cmd: cmd, l: l, acct: acct, outcome: outcome, attempt: attempt, revoked: revoked,
		touched: touched || outcome == eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED, done: make(chan struct{})}
	f := &s.finisher
	f.mu.Lock()
	f.queue = append(f.queue, it)
	f.startLocked()
	f.mu.Unlock()
	<-it.done
	return it.err
}

// startLocked starts batches while there is room and queued work whose worker is free.
func (f *finisher) startLocked() {
	for f.running < maxFinishBatches {
		batch := f.takeLocked()
		if len(batch) == 0 {
			return
		}
		f.running++
		go f.run(batch)
	}
}

// takeLocked takes up to maxFinishGroup queued items, in queue order, skipping workers that
// a batch in flight holds. Several items of one worker may share a batch.
func (f *finisher) takeLocked() []*finishItem {
	var batch, rest []*finishItem
	taken := map[string]bool{}
	for _, it := range f.queue {
		w := it.l.worker
		if len(batch) < maxFinishGroup && (taken[w] || !f.busy[w]) {
			batch = append(batch, it)
			taken[w] = true
		} else {
			rest = append(rest, it)
		}
	}
	f.queue = rest
	if f.busy == nil {
		f.busy = map[string]bool{}
	}
	for w := range taken {
		f.busy[w] = true
	}
	return batch
}

func (f *finisher) run(batch []*finishItem) {
	f.s.record(batch)
	f.mu.Lock()
	for _, it := range batch {
		delete(f.busy, it.l.worker)
	}
	f.running--
	f.startLocked()
	f.mu.Unlock()
	for _, it := range batch {
		close(it.done)
	}
}

// record writes a batch, or each of its items alone when the batch fails.
func (s *Service) record(batch []*finishItem) {
	err := s.recordTx(batch)
	if err == nil || len(batch) == 1 {
		for _, it := range batch {
			it.err = err
		}
	} else {
		s.log.Warn("finishing a batch of commands failed; recording them one by one", "commands", len(batch), "err", err)
		for _, it := range batch {
			it.err = s.recordTx([]*finishItem{it})
		}
	}
	s.relay.Poke()
}

// recordTx records the batch's items in one transaction.
func (s *Service) recordTx(batch []*finishItem) error {
	for _, it := range batch {
		it.current, it.activeGrants, it.revokedGrants, it.confirmed, it.deleted, it.cases = false, nil, nil, nil, nil, nil
		it.stale, it.reissued = false, nil
	}
	// Lock order: the workers' cases in worker order (see above).
	sort.SliceStable(batch, func(i, j int) bool { return batch[i].l.worker < batch[j].l.worker })
	ctx := context.WithoutCancel(batch[0].ctx)
	return pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		keys := make([]pgstore.InboxKey, len(batch))
		for i, it := range batch {
			keys[i] = pgstore.InboxKey{Consumer: workDurable(it.cmd.GetConnector()), MsgID: it.meta.ID, Subject: it.subject}
		}
		first, err := pgstore.ClaimAll(ctx, tx, keys)
		if err != nil {
			return err
		}
		var fresh []*finishItem // not recorded before
		for i, it := range batch {
			if first[i] {
				fresh = append(fresh, it)
			}
		}
		if len(fresh) == 0 {
			return nil
		}
		now := time.Now().UTC()
		open, err := s.markVerified(ctx, tx, fresh, now)
		if err != nil {
			return err
		}
		if err := s.reconvergeStale(ctx, tx, fresh, now); err != nil {
			return err
		}
		return s.completeAndEmit(ctx, tx, fresh, open, now)
	})
}

// openCaseRow is a worker's open case as the batch's updates left it.
type openCaseRow struct {
	id, hrEvent      string
	opened, deadline time.Time
	total, verified  int32
	touched          bool // a task of it was verified in this batch
	worker, email    string
	workerStatus     string
	lastItem         *finishItem
}

// markVerified locks the workers' open cases (one round trip), then sends every item's
// updates in one pipelined round trip: record the read-back on the link (only while the link
// is still at the command's generation; every later statement checks the same, so a late
// command changes nothing), resolve its dead letters and issued deletion, confirm revoked
// grants, mark its task in the worker's open case, and count that case after the worker's
// last item. It returns the workers' open cases.
//
// Tasks and cases are addressed by primary key. Statements are planned once per connection
// and the plan is kept: a plan made while the tables were small (a fresh install, the start
// of a mass termination) must not turn into a scan of every open case later.
func (s *Service) markVerified(ctx context.Context, tx pgx.Tx, items []*finishItem, now time.Time) (map[string]*openCaseRow, error) {
	var verified []*finishItem
	var workers []string
	for _, it := range items {
		if it.outcome == eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED {
			if len(verified) == 0 || verified[len(verified)-1].l.worker != it.l.worker {
				workers = append(workers, it.l.worker)
			}
			verified = append(verified, it)
		}
	}
	open := map[string]*openCaseRow{}
	if len(verified) == 0 {
		return open, nil
	}
	// Serialise the tasks of each worker's open case so the last one sees all others
	// verified; in worker order, like every batch. Planned for these workers each time
	// (QueryExecModeExec), so the plan follows the table as it grows.
	rows, err := tx.Query(ctx, "SELECT worker_id, case_id FROM cases WHERE worker_id = ANY($1) AND status = 'open' ORDER BY worker_id FOR UPDATE",
		pgx.QueryExecModeExec, workers)
	if err != nil {
		return nil, err
	}
	caseOf := map[string]string{}
	var w, id string
	if _, err := pgx.ForEachRow(rows, []any{&w, &id}, func() error { caseOf[w] = id; return nil }); err != nil {
		return nil, err
	}
	// A worker whose latest leaver case HR rescinded is back: a disable of that case reports
	// no revocation, nor does a grant its leaver revoked (leaverRescinded); a security team
	// acting on them (ending sessions, say) would act against a reinstated worker. The
	// results still carry the revoked grants, so approval confirms them. A rescind in flight
	// held the case (open, locked above), so it has committed by now.
	{
		rows, err := tx.Query(ctx, `SELECT DISTINCT ON (worker_id) worker_id, rescinded_at IS NOT NULL FROM cases
			WHERE worker_id = ANY($1) ORDER BY worker_id, opened_at DESC`, workers)
		if err != nil {
			return nil, err
		}
		undone := map[string]bool{}
		var r bool
		if _, err := pgx.ForEachRow(rows, []any{&w, &r}, func() error { undone[w] = r; return nil }); err != nil {
			return nil, err
		}
		for _, it := range verified {
			it.leaverUndone = undone[it.l.worker]
		}
	}
	b := &pgx.Batch{}
	// The links' rows first, in link order, before any statement below takes its snapshot.
	// A revoke (onDecision) deactivates the grant, then locks the link and confirms at once
	// only if the link's read-back is current. Without this lock the statement below could
	// take its snapshot before that revoke commits and then wait for the link: each
	// transaction would miss what the other wrote, and the revoke would never be confirmed
	// (no grant_revoked, no revoke_confirmed_at). Locked first, the statement waits for the
	// revoke and sees its grant inactive, or the revoke waits and sees the read-back current.
	linkIDs := make([]string, len(verified))
	for i, it := range verified {
		linkIDs[i] = it.l.id
	}
	b.Queue("SELECT link_id FROM links WHERE link_id = ANY($1) ORDER BY link_id FOR UPDATE", linkIDs)
	marking := map[string]bool{} // workers whose case tasks the batch marks
	for i, it := range verified {
		l, gen := it.l, it.cmd.GetGeneration()
		caseID := caseOf[l.worker]
		// Level-triggered: the link read back disabled at this generation satisfies the open
		// case's task issued for it at this generation or before, whichever command carried
		// the case id. Only a disable marks a task.
		markCase := ""
		if caseID != "" && it.cmd.GetOp() == eventsv1.ProvisionOp_PROVISION_OP_DISABLE {
			markCase = caseID
			marking[l.worker] = true
		}
		// After the worker's last item, its open case is counted, in the same statement.
		count := marking[l.worker] && (i == len(verified)-1 || verified[i+1].l.worker != l.worker)
		// One statement records the read-back on the link and, only if that took (the link
		// is still at the command's generation), resolves its open dead letters (so the
		// operators' list shows only what still needs them), confirms the revoked grants
		// this read-back is the first to reflect (one grant_revoked each) and marks the
		// case's task (a superseded disable is not the case's evidence). It returns the
		// link's grants, which the target now reflects when the read-back is current: the
		// approval service matches these ids to confirm grants and revokes.
		sql := `WITH link AS (
			  UPDATE links SET observed_state = $3, observed_generation = $2, observed_entitlements = $4, verified_at = $5,
			    account_id = CASE WHEN $6 <> '' THEN $6 ELSE account_id END, attempts = 0, last_error = ''
			  WHERE link_id = $1 AND generation = $2 RETURNING link_id
			), dead AS (
			  UPDATE dead_letters SET status = 'resolved' WHERE link_id = $1 AND status = 'open' AND EXISTS (SELECT 1 FROM link)
			), confirmed AS (
			  UPDATE link_grants SET revoke_confirmed_at = $5
			  WHERE link_id = $1 AND NOT active AND revoke_confirmed_at IS NULL AND EXISTS (SELECT 1 FROM link) RETURNING grant_id, entitlements, revoke_reason
			), task AS (
			  UPDATE case_accounts SET status = 'verified', verified_at = $5, observed_state = $3, attempts = attempts + 1
			  WHERE case_id = $7 AND link_id = $1 AND status <> 'verified' AND generation <= $2 AND EXISTS (SELECT 1 FROM link)
			  RETURNING case_id
			)
			SELECT EXISTS (SELECT 1 FROM link),
			  ARRAY(SELECT grant_id FROM link_grants WHERE link_id = $1 AND active ORDER BY grant_id),
			  ARRAY(SELECT grant_id FROM link_grants WHERE link_id = $1 AND NOT active ORDER BY grant_id),
			  (SELECT coalesce(json_agg(json_build_object('id', grant_id, 'entitlements', entitlements, 'reason', revoke_reason) ORDER BY grant_id), '[]') FROM confirmed),
			  ARRAY(SELECT case_id FROM task)`
		args := []any{l.id, gen, it.acct.State.String(), nonNil(it.acct.Entitlements), now, it.acct.ID, markCase}
		if !count {
			b.Queue(sql, args...).QueryRow(func(row pgx.Row) error {
				return row.Scan(&it.current, &it.activeGrants, &it.revokedGrants, &it.confirmed, &it.cases)
			})
		} else {
			// The statement's own task update is not visible to its subqueries, so it is
			// added to the verified count. The tasks of the worker's earlier items, sent
			// before in this batch, are; no other transaction marks a task of the case
			// while this one holds it locked.
			c := &openCaseRow{worker: l.worker, email: l.email}
			b.Queue(sql+`, c.case_id, c.hr_event_id, c.opened_at, c.deadline,
				  (SELECT count(*) FROM case_accounts a WHERE a.case_id = c.case_id),
				  (SELECT count(*) FROM case_accounts a WHERE a.case_id = c.case_id AND a.status = 'verified') + (SELECT count(*) FROM task),
				  coalesce((SELECT w.status FROM workers w WHERE w.worker_id = c.worker_id), '')
				FROM cases c WHERE c.case_id = $8`, append(args, caseID)...).
				QueryRow(func(row pgx.Row) error {
					if err := row.Scan(&it.current, &it.activeGrants, &it.revokedGrants, &it.confirmed, &it.cases,
						&c.id, &c.hrEvent, &c.opened, &c.deadline, &c.total, &c.verified, &c.workerStatus); err != nil {
						return err
					}
					open[c.id] = c
					return nil
				})
		}
		if l.desired == stateAbsent {
			b.Queue(`UPDATE deletions SET status = 'deleted', completed_at = now()
				WHERE link_id = $1 AND status = 'issued' AND EXISTS (SELECT 1 FROM links WHERE link_id = $1 AND generation = $2)
				RETURNING `+deletionColumns, l.id, gen).
				Query(func(rows pgx.Rows) error {
					ds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (deletion, error) {
						var d deletion
						return d, r.Scan(d.fields()...)
					})
					it.deleted = ds
					return err
				})
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	for _, it := range verified {
		for _, id := range it.cases {
			if c := open[id]; c != nil {
				c.touched, c.lastItem = true, it
			}
		}
	}
	return open, nil
}

// completeAndEmit completes the cases whose last task the batch verified and writes every
// item's events, each item's in the order a transaction of its own wrote them. A completed
// case of a worker who came back meanwhile (rehired while it verified) releases the access
// granted since, which waited for the case (releaseHeld).
func (s *Service) completeAndEmit(ctx context.Context, tx pgx.Tx, items []*finishItem, open map[string]*openCaseRow, now time.Time) error {
	completions := map[*finishItem][]*openCaseRow{}
	released := map[*finishItem][]events.Event{}
	b := &pgx.Batch{}
	for _, c := range open {
		if c.touched && c.verified >= c.total {
			b.Queue("UPDATE cases SET status = 'completed', completed_at = $2 WHERE case_id = $1 AND status = 'open'", c.id, now)
			completions[c.lastItem] = append(completions[c.lastItem], c)
			if c.workerStatus != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED.String() {
				it := c.lastItem
				releaseHeld(b, c.worker, func(cmds []events.Event) { released[it] = append(released[it], cmds...) })
			}
		}
	}
	if b.Len() > 0 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
	}
	var out []pgstore.Outgoing
	for _, it := range items {
		for _, e := range s.finishedEvents(it, now) {
			out = append(out, pgstore.Outgoing{Ctx: it.ctx, Event: e})
		}
		for _, c := range completions[it] {
			for _, e := range caseCompleted(c.id, c.worker, c.email, c.hrEvent, c.opened, c.deadline, now, c.total, c.verified) {
				out = append(out, pgstore.Outgoing{Ctx: it.ctx, Event: e})
			}
		}
		for _, e := range released[it] {
			out = append(out, pgstore.Outgoing{Ctx: it.ctx, Event: e})
		}
	}
	return pgstore.EnqueueAll(ctx, tx, out)
}

// finishedEvents are an item's result, deletion, grant revocation and revocation events.
func (s *Service) finishedEvents(it *finishItem, now time.Time) []events.Event {
	l, cmd := it.l, it.cmd
	outcome := it.outcome
	if it.stale {
		// Its read-back is on record, but the decision it carried out is not the current
		// one: no verified result, no revocation events.
		outcome = eventsv1.ProvisionOutcome_PROVISION_OUTCOME_SUPERSEDED
	}
	res := result(cmd, l, outcome, it.attempt, it.acct, "")
	out := []events.Event{res}
	if outcome != eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED {
		return append(out, it.reissued...)
	}
	system := s.targets[cmd.GetConnector()].System
	// A disable of the leaver case HR rescinded: its result still carries the grants (approval
	// confirms them), but it announces no revocation.
	undone := it.leaverUndone && cmd.GetCaseId() != "" && cmd.GetOp() == eventsv1.ProvisionOp_PROVISION_OP_DISABLE
	if it.current {
		r := res.Payload.(*eventsv1.ProvisionResult)
		r.GrantIds, r.RevokedGrantIds = it.activeGrants, it.revokedGrants
		if undone {
			return out
		}
		for _, d := range it.deleted {
			out = append(out, s.deletionEventOf(d, l.username))
		}
		for _, g := range it.confirmed {
			if it.leaverUndone && g.byLeaver() {
				continue // revoked by a termination HR rescinded
			}
			out = append(out, grantRevokedEvent(l, system, g, cmd.GetCaseId(), now))
		}
	}
	if undone {
		return out
	}
	if cmd.GetOp() == eventsv1.ProvisionOp_PROVISION_OP_DISABLE {
		rev := func(kind eventsv1.RevocationKind, tok string) events.Event {
			id := accountRevocationID(tok, l.id, cmd.GetGeneration())
			return events.Event{ID: id, Subject: events.Subject("tenure.revocation", tok, l.worker), Source: source, WorkerID: l.worker, Actor: "provisioner",
				Payload: &eventsv1.Revocation{RevocationId: id, Kind: kind, WorkerId: l.worker, Email: l.email, Connector: cmd.GetConnector(),
					System: system, LinkId: l.id, Username: l.username, CaseId: cmd.GetCaseId(), OccurredAt: timestamppb.New(now), Verified: true}}
		}
		if it.revoked.sessions {
			out = append(out, rev(eventsv1.RevocationKind_REVOCATION_KIND_SESSION_REVOKED, "session_revoked"))
		}
		out = append(out, rev(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "account_disabled"))
		if it.revoked.credentials {
			out = append(out, rev(eventsv1.RevocationKind_REVOCATION_KIND_CREDENTIALS_REVOKED, "credentials_revoked"))
		}
	}
	return out
}

// accountRevocationID names an account-level revocation by what it reports: the decision
// (the link at a generation) that a disable carried out. A disable of one generation can be
// verified twice (issued again by reconvergeStale, on another replica), and both
// verifications report the same revocation: with one id, JetStream (Nats-Msg-Id, within its
// dedupe window), the ledger (ce-id) and the SSF transmitter (jti) keep it once.
func accountRevocationID(kind, linkID string, generation int64) string {
	return fmt.Sprintf("provisioner:%s:%s:%d", kind, linkID, generation)
}

// reconvergeStale handles the items that touched the target although their link has moved
// on to a newer generation: a verified command whose read-back was no longer current, and a
// superseded one that had already changed the target. Its calls may have landed after those
// of the newer command, even after that command's read-back (commands of one link take
// turns within a process, not across replicas), so the newer command's verification says
// nothing about what the target shows now. The stale command's read-back was taken after its
// last call, so:
//   - if it shows the link's current desired state, the target converged and nothing is done;
//   - otherwise it is recorded on the link (observed state at the stale command's generation,
//     so the link shows unconverged) and a command for the link's current generation is
//     issued in this transaction, carrying the case of that generation if there is one; with
//     no read-back (the target did not answer) the command is issued all the same.
//
// The command is not issued when one at the current generation waits in this process's lane
// for the link: it is sure to run after the stale command's last call. Any newer generation
// is decided after this transaction read the link, so its command runs after too. The
// item itself is recorded as superseded, never verified (finishedEvents).
func (s *Service) reconvergeStale(ctx context.Context, tx pgx.Tx, items []*finishItem, now time.Time) error {
	var stale []*finishItem
	for _, it := range items {
		verified := it.outcome == eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED
		if (verified && !it.current) || (it.outcome == eventsv1.ProvisionOutcome_PROVISION_OUTCOME_SUPERSEDED && it.touched) {
			it.stale = true
			stale = append(stale, it)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	type current struct {
		l      link
		caseID string
	}
	curs := make([]current, len(stale))
	b := &pgx.Batch{}
	for i, it := range stale {
		c := &curs[i]
		b.Queue(`SELECT l.link_id, l.worker_id, l.connector, l.username, l.desired_state, l.desired_entitlements, l.generation,
			  coalesce((SELECT a.case_id FROM case_accounts a JOIN cases c USING (case_id) WHERE a.link_id = l.link_id AND a.generation = l.generation
			    ORDER BY c.opened_at DESC LIMIT 1), '')
			FROM links l WHERE l.link_id = $1`, it.l.id).QueryRow(func(row pgx.Row) error {
			return row.Scan(&c.l.id, &c.l.worker, &c.l.conn, &c.l.username, &c.l.desired, &c.l.entitlements, &c.l.generation, &c.caseID)
		})
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	b = &pgx.Batch{}
	for i, it := range stale {
		cur := curs[i]
		_, exact := s.targets[cur.l.conn].Conn.(connector.EntitlementGranter)
		if converged(cur.l, it.acct, exact) {
			continue
		}
		if a := it.acct; a != nil {
			b.Queue(`UPDATE links SET observed_state = $2, observed_entitlements = $3, observed_generation = $4, verified_at = $5,
				  account_id = CASE WHEN account_id = '' THEN $6 ELSE account_id END
				WHERE link_id = $1`, cur.l.id, a.State.String(), nonNil(a.Entitlements), it.cmd.GetGeneration(), now, a.ID)
		}
		observed := "no read-back"
		if it.acct != nil {
			observed = it.acct.State.String()
		}
		if s.lanes.waiting(cur.l.id, cur.l.generation) {
			s.log.InfoContext(it.ctx, "superseded command left the account unconverged; the current command is next",
				"link", cur.l.id, "username", cur.l.username, "observed", observed, "desired", cur.l.desired, "generation", cur.l.generation)
			continue
		}
		s.log.WarnContext(it.ctx, "superseded command left the account unconverged; re-issuing the current decision",
			"link", cur.l.id, "username", cur.l.username, "command_generation", it.cmd.GetGeneration(), "observed", observed,
			"desired", cur.l.desired, "generation", cur.l.generation)
		var ev events.Event
		if cur.l.desired == stateAbsent {
			ev = deleteCommand(cur.l.worker, cur.l.conn, cur.l.id, cur.l.generation)
		} else {
			ev = command(cur.l.worker, cur.l.conn, cur.l.id, cur.l.generation, opFor(cur.l.desired), cur.caseID)
		}
		it.reissued = append(it.reissued, ev)
	}
	if b.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, b).Close()
}
