package intake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// pending is one validated HR event about to be applied to the registry, whatever brought it:
// a webhook, a held event whose time came, an ended contract or a snapshot.
type pending struct {
	source        string
	sourceEventID string // WorkerEvent.event_id: the webhook-id or a derived id
	eventID       string // ce-id and Nats-Msg-Id
	c             change
	eff           time.Time
	received      time.Time
	actor         string
	// fromSchedule: a held event firing; its scheduled_events row exists.
	fromSchedule bool
	// headers: the delivery's trace context (JSON), kept with an event held for its hire.
	headers []byte
	// fromRoster: an HR snapshot's change, which speaks for the worker's state as of the
	// roster (a rehire there needs no new start date).
	fromRoster bool
	// cur is the worker's record, already read FOR UPDATE in tx when loaded is true.
	cur    *record
	loaded bool
}

// applyResult is what an apply did.
type applyResult struct {
	ev events.Event
	// publish is false for an event that changed no access: it is kept in the history but
	// not published, so nothing downstream can read an old state as news.
	publish bool
	// stale: older than the registry's record; it did not change it.
	stale bool
	// writeRecord: the registry record changes (an applied event, or a termination for a
	// worker never seen, which is recorded as terminated without publishing a leaver).
	writeRecord bool
	// noEffect says why an event that was not stale changed no access ("" when it did).
	noEffect string
	// finding is raised for an operator with the event (findings.go).
	finding *finding
	// joiner: the event brings the worker in (a hire, a rehire, or a rescind that lets a
	// blocked hire apply); changes waiting for the hire are released.
	joiner bool
	// forget: the worker's record is removed (a rescind of a termination of a worker never
	// hired: they are unknown again).
	forget bool
	// then: events of changes that waited for this hire and applied right after it.
	then []events.Event
	// waitForHire: a change for a worker not hired yet is held until the hire applies
	// (shuffled delivery: HR's job change can arrive before its hire), then fires in order.
	waitForHire bool
	worker      *eventsv1.Worker
}

// effect is what the webhook answer says an event did: "applied" or "none".
func (r applyResult) effect() string {
	if r.publish {
		return "applied"
	}
	return "none"
}

// published is what the apply puts out, in order: its own event, if it changed access, then
// those of the changes that waited for this hire.
func (r applyResult) published() []events.Event {
	if !r.publish {
		return r.then
	}
	return append([]events.Event{r.ev}, r.then...)
}

// reason is why an event had no effect, for the webhook answer and the history.
func (r applyResult) reason() string {
	if r.stale && r.noEffect == "" {
		return "older than the worker's current record: recorded in the history, nothing changed"
	}
	return r.noEffect
}

// applyPlan is what apply decided for one event, before anything is written: the result, and
// the record and history rows to write.
type applyPlan struct {
	applyResult
	p        pending
	w        *eventsv1.Worker
	eff      time.Time // the event's effective time, kept in the history
	writeEff time.Time // the effective time of the record written
	// queued counts the statements queueWrites added after the record's upsert.
	queued int
	// supersedeAt, set for a termination that applies, cancels (at that time) the worker's
	// held events that HR sent before it: a hire, job change or leave scheduled for later does
	// not outlive the termination (a rescind brings them back). A rehire is a new employment
	// after it and stays.
	supersedeAt time.Time
}

// supersededBy is the error text of a held event cancelled by a termination.
func supersededBy(eventID string) string { return "superseded by termination " + eventID }

// apply applies one event to the registry and history in tx, in effective-time order:
//
//   - an event at or after the current record's effective time applies;
//   - an older (stale) event does not change the record and is not published — except a
//     leaver: a termination effective before the current record still terminates the worker
//     (retroactively, keeping the newer attributes), unless a hire, rehire or rescind applied
//     after it. So a late job change or joiner never re-activates a leaver, and a late
//     termination is never lost;
//   - a termination_rescinded cancels held terminations of the worker and, if the worker is
//     terminated and the termination is within Config.RescindGrace, restores the record the
//     worker had before it. Otherwise it is a 422.
func (s *Service) apply(ctx context.Context, tx pgx.Tx, p pending) (applyResult, error) {
	pl, err := s.plan(ctx, tx, p)
	if err != nil {
		return applyResult{}, err
	}
	b := &pgx.Batch{}
	if err := pl.queueWrites(b); err != nil {
		return applyResult{}, err
	}
	br := tx.SendBatch(ctx, b)
	defer br.Close()
	if err := pl.readWrites(br); err != nil {
		return applyResult{}, err
	}
	if err := br.Close(); err != nil {
		return applyResult{}, err
	}
	if pl.writeRecord && pl.joiner {
		if pl.then, err = s.releaseWaiting(ctx, tx, p.c.worker.WorkerId, p.eventID); err != nil {
			return applyResult{}, err
		}
	}
	return pl.applyResult, nil
}

// releaseWaiting applies, in tx and in effective-time order, the changes that waited for the
// worker's hire (just applied in tx), as if they had arrived right after it, with any held
// change of the worker already due (one a rescind put back, which the scheduler would find
// waiting for a hire); one effective later than now goes back to the schedule. It returns the events to publish after the
// hire's, in order (the caller puts them in the outbox). hireID is the hire itself (a held
// hire firing is still a scheduled row).
func (s *Service) releaseWaiting(ctx context.Context, tx pgx.Tx, worker, hireID string) ([]events.Event, error) {
	rows, err := tx.Query(ctx, `SELECT event_id, source, source_event_id, event, effective_time, received_at FROM scheduled_events
		WHERE worker_id = $1 AND (state = 'waiting' OR (state = 'scheduled' AND effective_time <= $2)) AND event_id <> $3
		ORDER BY effective_time, received_at, event_id FOR UPDATE`, worker, s.now(), hireID)
	if err != nil {
		return nil, fmt.Errorf("intake: read waiting events: %w", err)
	}
	type waiting struct {
		eventID, source, sourceEventID string
		body                           []byte
		eff, received                  time.Time
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (waiting, error) {
		var x waiting
		return x, r.Scan(&x.eventID, &x.source, &x.sourceEventID, &x.body, &x.eff, &x.received)
	})
	if err != nil {
		return nil, fmt.Errorf("intake: read waiting events: %w", err)
	}
	now := s.now()
	var out []events.Event
	for _, x := range list {
		state, why := "fired", ""
		c, err := decodeHeld(x.body)
		switch {
		case err != nil:
			state, why = "failed", err.Error()
		case x.eff.After(now):
			state = "scheduled" // the scheduler fires it at its time
		default:
			ar, err := s.apply(ctx, tx, pending{source: x.source, sourceEventID: x.sourceEventID, eventID: x.eventID, c: c,
				eff: x.eff, received: x.received, actor: "hris:" + x.source, fromSchedule: true})
			var ie *InputError
			switch {
			case errors.As(err, &ie):
				state, why = "failed", ie.Error()
			case err != nil:
				return nil, err
			default:
				out = append(out, ar.published()...)
			}
		}
		done := &now
		if state == "scheduled" {
			done = nil
		}
		if _, err := tx.Exec(ctx, `UPDATE scheduled_events SET state = $2, error = $3, done_at = $4 WHERE event_id = $1`, x.eventID, state, why, done); err != nil {
			return nil, fmt.Errorf("intake: release held event: %w", err)
		}
	}
	return out, nil
}

// plan decides how an event applies (see apply) without writing the record or the history;
// it may read the history, and a rescind cancels held terminations in tx.
func (s *Service) plan(ctx context.Context, tx pgx.Tx, p pending) (applyPlan, error) {
	et := p.c.typ
	w := proto.Clone(p.c.worker).(*eventsv1.Worker)
	id := w.WorkerId
	cur := p.cur
	if !p.loaded {
		var err error
		if cur, err = loadWorker(ctx, tx, id, true); err != nil {
			return applyPlan{}, err
		}
	}
	eff := p.eff
	var curStatus eventsv1.WorkerStatus
	if cur != nil {
		curStatus = cur.worker.Status
	}
	res := applyResult{publish: true, writeRecord: true}
	// What is published; a rescind that lets a blocked hire apply publishes that joiner.
	hrType, reason := p.c.hrType, p.c.reason
	writeEff := eff
	terminated := curStatus == eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED
	leaver := et.kind == eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER
	switch {
	case p.c.hrType == "termination_rescinded":
		base, err := s.rescind(ctx, tx, id, cur, p.received)
		if err != nil {
			return applyPlan{}, err
		}
		if base.Status == eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED {
			// The termination was of a worker never seen hired. A hire that arrived after it
			// (stale only because of it) applies now, as the joiner it always was; without
			// one the worker is unknown again, and their hire applies when it comes.
			hire, hireEff, err := blockedHire(ctx, tx, id)
			if err != nil {
				return applyPlan{}, err
			}
			if hire == nil {
				res.writeRecord, res.publish, res.forget = false, false, true
				res.noEffect = "the rescinded termination was of worker " + clip(id) + ", whom tenure never saw hired: the worker is unknown again"
				break
			}
			w = hire
			w.Status = eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE
			et, hrType = eventTypes["hire"], "hire"
			reason = "termination rescinded: the hire it had blocked applies"
			if hireEff.After(eff) {
				eff = hireEff
			}
			if cur != nil && eff.Before(cur.effectiveTime) {
				eff = cur.effectiveTime
			}
			writeEff = eff
			break
		}
		fill(w, base)
		w.Status = base.Status
		if cur != nil && eff.Before(cur.effectiveTime) {
			// A rescind undoes the termination now, whatever date HR put on it.
			eff = cur.effectiveTime
		}
		writeEff = eff
	case cur == nil && leaver:
		if held, err := hasHeld(ctx, tx, id); err != nil {
			return applyPlan{}, err
		} else if held {
			// Pre-hire: the hire is held for its start date. The termination withdraws the
			// offer: what was held is cancelled and nothing was ever provisioned.
			w.Status = eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED
			res.publish = false
			res.noEffect = "worker " + clip(id) + " had not started: the held hire and changes are cancelled, no leaver published"
			break
		}
		// A termination for a worker tenure has never seen has no access to remove that
		// tenure knows of. It is not published as a leaver with an empty record; the worker is
		// recorded as terminated (so a late or re-sent hire cannot make them active) and an
		// operator looks at the finding (an account linked by hand, a missed hire).
		w.Status = eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED
		res.publish = false
		res.noEffect = "worker " + clip(id) + " was never hired in tenure: recorded as terminated, no leaver published"
		res.finding = &finding{kind: findingUnknownWorker, detail: fmt.Sprintf("%s for worker %s, whom tenure has never seen: recorded as terminated, no leaver published; check the targets for accounts of this worker (tenurectl reconcile) and the HRIS feed for a missed hire", p.c.hrType, clip(id))}
	case cur == nil && et.kind != eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER:
		// A change for a worker not hired yet: HR's hire is late (deliveries arrive in any
		// order) or was missed. The change waits for the hire and then applies in order.
		res.waitForHire, res.writeRecord, res.publish = true, false, false
		res.noEffect = "worker " + clip(id) + " is not hired yet: the " + p.c.hrType + " is held until the hire arrives"
		res.finding = &finding{kind: findingUnknownWorker, detail: fmt.Sprintf("%s for worker %s, whom tenure has not seen hired: held until the hire arrives (this finding closes then); if the hire was missed, reconcile a roster", p.c.hrType, clip(id))}
	case cur != nil && eff.Before(cur.effectiveTime):
		res.stale, res.writeRecord, res.publish = true, false, false
		if !et.full {
			fill(w, cur.worker)
		}
		w.Status = statusAfter(et, curStatus)
		if leaver && !terminated {
			back, err := reactivatedAfter(ctx, tx, id, eff)
			if err != nil {
				return applyPlan{}, err
			}
			if !back {
				// Retroactive termination: the newer attributes stay, the worker leaves.
				res.stale, res.writeRecord, res.publish = false, true, true
				nw := proto.Clone(cur.worker).(*eventsv1.Worker)
				nw.Status = eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED
				if p.c.worker.EndDate != "" {
					nw.EndDate = p.c.worker.EndDate
				}
				w = nw
				writeEff = cur.effectiveTime
			}
		}
	case terminated && leaver:
		// Already gone: a second termination (a re-send with other content, a correction, a
		// contract end after a termination) opens no second leaver case.
		res.writeRecord, res.publish = false, false
		res.noEffect = "worker " + clip(id) + " is already terminated"
	case terminated && p.c.hrType == "rehire" && !p.fromRoster && !startsAfter(w, cur):
		res.writeRecord, res.publish = false, false
		res.noEffect = fmt.Sprintf("rehire of worker %s starts %s, not after the termination (%s): a rehire must start after it", clip(id), w.StartDate, terminationDate(cur))
		res.finding = &finding{kind: findingEventForLeaver, detail: res.noEffect + "; nothing changed"}
	case terminated && p.c.hrType != "rehire":
		// Only a rehire or a rescind brings a leaver back. Anything else (a re-sent hire, a
		// job change, a leave, a conversion) is recorded, changes no access, and an operator
		// sees it.
		res.writeRecord, res.publish = false, false
		res.noEffect = fmt.Sprintf("worker %s has left; a %s changes no access: only a rehire (starting after the termination) or a termination_rescinded brings a leaver back", clip(id), p.c.hrType)
		res.finding = &finding{kind: findingEventForLeaver, detail: res.noEffect}
	default:
		if cur != nil && !et.full {
			fill(w, cur.worker)
			if !leaver {
				if err := checkMerged(p.c, w); err != nil {
					return applyPlan{}, err
				}
			}
		}
		w.Status = statusAfter(et, curStatus)
	}

	if !res.publish && cur != nil && !res.writeRecord {
		res.worker = cur.worker
	} else {
		res.worker = w
	}
	if res.publish {
		res.ev = events.Event{
			ID:       p.eventID,
			Subject:  events.Subject(SubjectPrefix, et.token, id),
			Source:   "tenure/intake/" + p.source,
			WorkerID: id,
			Actor:    p.actor,
			Time:     p.received,
			Payload: &eventsv1.WorkerEvent{
				EventId:       p.sourceEventID,
				Source:        p.source,
				Kind:          et.kind,
				HrEventType:   hrType,
				Reason:        reason,
				Worker:        w,
				EffectiveTime: timestamppb.New(eff),
				ReceivedTime:  timestamppb.New(p.received),
			},
		}
	}
	pl := applyPlan{applyResult: res, p: p, w: w, eff: eff, writeEff: writeEff}
	pl.joiner = et.kind == eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER
	if (res.publish || (cur == nil && leaver)) && p.c.hrType == "termination" {
		// A contract end is the calendar, not HR: what HR scheduled (a conversion's rehire)
		// stands.
		pl.supersedeAt = s.now()
	}
	return pl, nil
}

// checkMerged checks what a partial event leaves after the record filled in its other
// fields: a job change must not put the end date before the start date on record. (Leavers
// are not checked: a termination before the start date is an offer withdrawn.)
func checkMerged(c change, w *eventsv1.Worker) error {
	if w.StartDate == "" || w.EndDate == "" || w.EndDate >= w.StartDate {
		return nil
	}
	if c.worker.EndDate != "" {
		return Unprocessable("worker.end_date", "worker.end_date %s is before the start date on record (%s)", w.EndDate, w.StartDate)
	}
	return Unprocessable("worker.start_date", "worker.start_date %s is after the end date on record (%s)", w.StartDate, w.EndDate)
}

// queueWrites adds the event's writes to b: the record (when it changes), the held events it
// cancels or releases, a finding, the history row (or, for a change waiting for its
// worker's hire, the held row); readWrites reads their results back, in the same order.
// Under the row lock an event that is not stale always applies (writeEff is never before
// the stored one).
func (pl *applyPlan) queueWrites(b *pgx.Batch) error {
	p := pl.p
	id := p.c.worker.WorkerId
	pl.queued = 0
	q := func(sql string, args ...any) {
		b.Queue(sql, args...)
		pl.queued++
	}
	if pl.writeRecord {
		queueUpsertWorker(b, pl.w, pl.writeEff, p.eventID, p.source, p.received)
	}
	if pl.forget {
		q(`DELETE FROM workers WHERE worker_id = $1`, id)
	}
	if !pl.supersedeAt.IsZero() {
		q(`UPDATE scheduled_events SET state = 'cancelled', done_at = $2, error = $3
			WHERE worker_id = $1 AND state IN ('scheduled', 'waiting') AND received_at < $4
			AND hr_event_type NOT IN ('termination', 'contract_end', 'termination_rescinded', 'rehire')`,
			id, pl.supersedeAt, supersededBy(p.eventID), p.received)
	}
	if pl.writeRecord && pl.joiner {
		// The hire the changes were waiting for (they apply after it: releaseWaiting): the
		// findings they raised are settled.
		q(`UPDATE findings SET status = 'resolved', resolved_at = $2, resolved_by = 'tenure/intake', resolution = $3
			WHERE worker_id = $1 AND kind = $4 AND status = 'open' AND hr_event_type NOT IN ('termination', 'contract_end')`,
			id, p.received, "the hire arrived ("+p.eventID+"); the held changes apply after it", findingUnknownWorker)
	}
	if pl.finding != nil {
		queueFinding(b, pl.finding.with(p), p.received)
		pl.queued++
	}
	if pl.waitForHire {
		if !p.fromSchedule {
			ev, err := json.Marshal(hrEventOf(p.c))
			if err != nil {
				return err
			}
			q(`INSERT INTO scheduled_events (event_id, source, source_event_id, worker_id, hr_event_type, event, headers, effective_time, received_at, state, error)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'waiting', $10)`,
				p.eventID, p.source, p.sourceEventID, id, p.c.hrType, ev, p.headers, pl.eff, p.received, pl.reason())
		}
		return nil
	}
	if err := queueHistory(b, p.c, pl.w, p.eventID, p.source, pl.eff, p.received, pl.writeRecord, pl.reason()); err != nil {
		return err
	}
	pl.queued++
	return nil
}

func (pl *applyPlan) readWrites(br pgx.BatchResults) error {
	if pl.writeRecord {
		tag, err := br.Exec()
		if err != nil {
			return fmt.Errorf("intake: upsert worker: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("intake: upsert worker %s: a newer record appeared under the row lock", pl.w.WorkerId)
		}
	}
	for range pl.queued {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("intake: record event %s: %w", pl.p.eventID, err)
		}
	}
	return nil
}

// startsAfter reports whether a rehire starts after the worker's termination: its start
// date (when it has one) is after the end date on record, and not before the day the
// termination took effect. A re-sent old hire or rehire does not.
func startsAfter(w *eventsv1.Worker, cur *record) bool {
	if w.StartDate == "" {
		return true
	}
	if cur.worker.EndDate != "" && w.StartDate <= cur.worker.EndDate {
		return false
	}
	return w.StartDate >= cur.effectiveTime.UTC().Format(time.DateOnly)
}

// terminationDate names when a terminated worker left, for messages.
func terminationDate(cur *record) string {
	if cur.worker.EndDate != "" {
		return "end date " + cur.worker.EndDate
	}
	return "effective " + cur.effectiveTime.UTC().Format(time.RFC3339)
}

// blockedHire returns the newest hire or rehire recorded as stale for the worker (one that a
// termination of a worker never seen made stale), with its effective time; nil if none.
func blockedHire(ctx context.Context, tx pgx.Tx, id string) (*eventsv1.Worker, time.Time, error) {
	var raw []byte
	var eff time.Time
	err := tx.QueryRow(ctx, `SELECT record, effective_time FROM worker_history WHERE worker_id = $1 AND NOT applied
		AND hr_event_type IN ('hire', 'rehire') ORDER BY effective_time DESC, seq DESC LIMIT 1`, id).Scan(&raw, &eff)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("intake: read history: %w", err)
	}
	w := &eventsv1.Worker{}
	if err := protojson.Unmarshal(raw, w); err != nil {
		return nil, time.Time{}, fmt.Errorf("intake: read history: %w", err)
	}
	return w, eff, nil
}

// hasHeld reports whether the worker has events held for later (a hire for a start date).
func hasHeld(ctx context.Context, tx pgx.Tx, id string) (bool, error) {
	var held bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM scheduled_events WHERE worker_id = $1 AND state IN ('scheduled', 'waiting'))`, id).Scan(&held)
	if err != nil {
		return false, fmt.Errorf("intake: read held events: %w", err)
	}
	return held, nil
}

// reactivatedAfter reports whether an event that brings a worker back applied after t.
func reactivatedAfter(ctx context.Context, tx pgx.Tx, id string, t time.Time) (bool, error) {
	var back bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM worker_history WHERE worker_id = $1 AND applied
		AND effective_time > $2 AND hr_event_type IN ('hire', 'rehire', 'termination_rescinded'))`, id, t).Scan(&back)
	if err != nil {
		return false, fmt.Errorf("intake: read history: %w", err)
	}
	return back, nil
}

// rescind cancels held terminations of the worker and returns the record to restore.
func (s *Service) rescind(ctx context.Context, tx pgx.Tx, id string, cur *record, now time.Time) (*eventsv1.Worker, error) {
	tag, err := tx.Exec(ctx, `UPDATE scheduled_events SET state = 'cancelled', done_at = $2, error = 'rescinded'
		WHERE worker_id = $1 AND state = 'scheduled' AND hr_event_type IN ('termination', 'contract_end')`, id, now)
	if err != nil {
		return nil, fmt.Errorf("intake: cancel held terminations: %w", err)
	}
	cancelled := tag.RowsAffected()
	if cur == nil || cur.worker.Status != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		if cancelled > 0 && cur != nil {
			return cur.worker, nil
		}
		if cancelled > 0 {
			return &eventsv1.Worker{WorkerId: id, Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, nil
		}
		return nil, Unprocessable("worker.worker_id", "worker %q has no termination to rescind", clip(id))
	}
	// The rescind undoes the worker's leaving: every termination applied since the worker was
	// last brought back (a hire, rehire or rescind), HR's corrections of the date included. It
	// took effect for tenure when the first of them applied: at its effective time, or when it
	// arrived if HR backdated it.
	var (
		termIDs              []string
		firstSeq             *int64
		firstEff, firstRecvd *time.Time
	)
	err = tx.QueryRow(ctx, `SELECT coalesce(array_agg(event_id ORDER BY seq), '{}'), min(seq),
		  (array_agg(effective_time ORDER BY seq))[1], (array_agg(received_at ORDER BY seq))[1]
		FROM worker_history WHERE worker_id = $1 AND applied AND kind = 'leaver'
		  AND seq > coalesce((SELECT max(seq) FROM worker_history WHERE worker_id = $1 AND applied
		    AND hr_event_type IN ('hire', 'rehire', 'termination_rescinded')), 0)`, id).Scan(&termIDs, &firstSeq, &firstEff, &firstRecvd)
	if err != nil {
		return nil, fmt.Errorf("intake: read history: %w", err)
	}
	termEff, termRecvd, termSeq := cur.effectiveTime, cur.effectiveTime, int64(math.MaxInt64)
	if firstSeq != nil {
		termEff, termRecvd, termSeq = *firstEff, *firstRecvd, *firstSeq
	}
	took := termEff
	if termRecvd.After(took) {
		took = termRecvd
	}
	if now.Sub(took) > s.cfg.RescindGrace {
		return nil, Unprocessable("type", "the termination of worker %q took effect %s, more than the rescind grace window (%s) ago; send a rehire instead",
			clip(id), took.UTC().Format(time.RFC3339), s.cfg.RescindGrace)
	}
	// What HR had scheduled before the terminations is scheduled again.
	if len(termIDs) > 0 {
		why := make([]string, len(termIDs))
		for i, t := range termIDs {
			why[i] = supersededBy(t)
		}
		if _, err := tx.Exec(ctx, `UPDATE scheduled_events SET state = 'scheduled', done_at = NULL, error = ''
			WHERE worker_id = $1 AND state = 'cancelled' AND error = ANY($2)`, id, why); err != nil {
			return nil, fmt.Errorf("intake: restore held events: %w", err)
		}
	}
	// Restore the record the worker had when the first termination applied: the last one
	// applied before it, whatever its effective date (a backdated termination keeps a later
	// job change).
	var raw []byte
	err = tx.QueryRow(ctx, `SELECT record FROM worker_history WHERE worker_id = $1 AND applied AND kind <> 'leaver'
		AND seq < $2 ORDER BY seq DESC LIMIT 1`, id, termSeq).Scan(&raw)
	prior := proto.Clone(cur.worker).(*eventsv1.Worker)
	prior.EndDate = ""
	if err == nil {
		pw := &eventsv1.Worker{}
		if protojson.Unmarshal(raw, pw) == nil {
			prior = pw
		}
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("intake: read history: %w", err)
	} else if firstSeq != nil {
		// Nothing was applied before the termination: it was of a worker tenure never saw
		// hired. Undoing it leaves the worker unknown again (status unspecified), so their
		// hire, when it comes, applies.
		return &eventsv1.Worker{WorkerId: id}, nil
	}
	if prior.Status != eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE {
		prior.Status = eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE
	}
	return prior, nil
}
