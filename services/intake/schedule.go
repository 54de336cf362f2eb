package intake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/telemetry"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// holdEvent stores an event effective in the future; Run fires it at its time.
func holdEvent(ctx context.Context, tx pgx.Tx, d Delivery, c change, eventID string, eff time.Time) error {
	ev := hrEventOf(c)
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	hb := traceHeaders(ctx)
	_, err = tx.Exec(ctx, `INSERT INTO scheduled_events (event_id, source, source_event_id, worker_id, hr_event_type, event, headers, effective_time, received_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		eventID, d.Source, d.WebhookID, c.worker.WorkerId, c.hrType, b, hb, eff, d.Received)
	if err != nil {
		return fmt.Errorf("intake: hold event: %w", err)
	}
	return nil
}

// traceHeaders is the trace context of ctx as stored with a held event (JSON NATS headers).
func traceHeaders(ctx context.Context) []byte {
	h := nats.Header{}
	telemetry.InjectNATS(ctx, h)
	hb, _ := json.Marshal(h)
	return hb
}

// decodeHeld reads a held event's stored canonical form back into a validated change.
func decodeHeld(body []byte) (change, error) {
	var ev HREvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return change{}, Unprocessable("", "held event is not readable: %v", err)
	}
	return validate(ev)
}

// hrEventOf turns a validated change back into its canonical form (for held events).
func hrEventOf(c change) HREvent {
	w := c.worker
	ev := HREvent{Type: c.hrType, Reason: c.reason, Worker: HRWorker{
		WorkerID: w.WorkerId, GivenName: w.GivenName, FamilyName: w.FamilyName, Email: w.Email, JobCode: w.JobCode,
		Department: w.Department, ManagerID: w.ManagerId, Location: w.Location, StartDate: w.StartDate, EndDate: w.EndDate,
		SponsorID: w.SponsorId, VendorOrg: w.VendorOrg,
	}}
	if w.WorkerType != eventsv1.WorkerType_WORKER_TYPE_UNSPECIFIED {
		ev.Worker.WorkerType = workerTypeToken(w.WorkerType)
	}
	if !c.effectiveTime.IsZero() {
		ev.EffectiveTime = c.effectiveTime.UTC().Format(time.RFC3339Nano)
	}
	return ev
}

func (s *Service) wakeScheduler() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run publishes the outbox, fires held events when their effective time comes and turns
// ended contracts into leavers, until ctx ends. Held events and the outbox live in Postgres,
// so whatever was due while the service was down goes out when it starts again.
func (s *Service) Run(ctx context.Context) error {
	relayDone := make(chan error, 1)
	go func() { relayDone <- s.relay.Run(ctx) }()
	t := time.NewTicker(s.cfg.ScheduleInterval)
	defer t.Stop()
	for {
		if err := s.Tick(ctx); err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "scheduler", "err", err)
		}
		select {
		case <-ctx.Done():
			<-relayDone
			return nil
		case <-t.C:
		case <-s.wake:
		}
	}
}

// Tick fires every held event that is due and every ended contract, once. Run calls it on
// each interval; it is safe to call concurrently (rows are claimed with SKIP LOCKED).
func (s *Service) Tick(ctx context.Context) error {
	n, err := s.fireDue(ctx)
	m, err2 := s.endContracts(ctx)
	if n+m > 0 {
		s.relay.Poke()
	}
	return errors.Join(err, err2, s.purgeReceipts(ctx))
}

// purgeReceipts deletes, at most once an hour, receipts older than Config.ReceiptRetention:
// after that a re-delivery or a re-send of the same content is a new event again (which the
// worker's lifecycle rules then judge). The history keeps every event.
func (s *Service) purgeReceipts(ctx context.Context) error {
	now := s.now()
	if last := s.lastPurge.Load(); last != nil && now.Sub(*last) < time.Hour {
		return nil
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM receipts WHERE received_at < $1`, now.Add(-s.cfg.ReceiptRetention))
	if err != nil {
		return fmt.Errorf("intake: purge receipts: %w", err)
	}
	s.lastPurge.Store(&now)
	if tag.RowsAffected() > 0 {
		s.log.InfoContext(ctx, "receipts past their retention deleted", "deleted", tag.RowsAffected(), "retention", s.cfg.ReceiptRetention.String())
	}
	return nil
}

// maxPerTick bounds the work of one tick; the next tick continues.
const maxPerTick = 1000

func (s *Service) fireDue(ctx context.Context) (int, error) {
	fired := 0
	for fired < maxPerTick {
		done, err := s.fireOne(ctx)
		if err != nil || !done {
			return fired, err
		}
		fired++
	}
	return fired, nil
}

// fireOne applies the oldest due held event in one transaction with its outbox row.
func (s *Service) fireOne(ctx context.Context) (bool, error) {
	now := s.now()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("intake: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var (
		eventID, source, sourceEventID string
		body, hb                       []byte
		eff, received                  time.Time
	)
	err = tx.QueryRow(ctx, `SELECT event_id, source, source_event_id, event, headers, effective_time, received_at
		FROM scheduled_events WHERE state = 'scheduled' AND effective_time <= $1
		ORDER BY effective_time, received_at, event_id LIMIT 1 FOR UPDATE SKIP LOCKED`, now).
		Scan(&eventID, &source, &sourceEventID, &body, &hb, &eff, &received)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("intake: read held events: %w", err)
	}
	var h nats.Header
	_ = json.Unmarshal(hb, &h)
	ectx := telemetry.ExtractNATS(ctx, h)
	finish := func(state, msg string) error {
		_, err := tx.Exec(ctx, `UPDATE scheduled_events SET state = $2, error = $3, done_at = $4 WHERE event_id = $1`, eventID, state, msg, now)
		return err
	}
	c, err := decodeHeld(body)
	if err == nil {
		var ar applyResult
		ar, err = s.apply(ectx, tx, pending{source: source, sourceEventID: sourceEventID, eventID: eventID, c: c,
			eff: eff, received: received, actor: "hris:" + source, fromSchedule: true})
		if err == nil && ar.waitForHire {
			// Due, but its worker is not hired (yet): it waits for the hire.
			if err := finish("waiting", ar.reason()); err != nil {
				return false, err
			}
			if err := tx.Commit(ctx); err != nil {
				return false, fmt.Errorf("intake: commit held event %s: %w", eventID, err)
			}
			return true, nil
		}
		if err == nil {
			if err := pgstore.Enqueue(ectx, tx, ar.published()...); err != nil {
				return false, fmt.Errorf("intake: enqueue %s: %w", eventID, err)
			}
			if err := finish("fired", ""); err != nil {
				return false, err
			}
			if err := tx.Commit(ctx); err != nil {
				return false, fmt.Errorf("intake: commit held event %s: %w", eventID, err)
			}
			s.log.InfoContext(ectx, "held event fired", "event_id", eventID, "worker_id", c.worker.WorkerId, "type", c.hrType, "published", ar.publish)
			return true, nil
		}
	}
	var ie *InputError
	if !errors.As(err, &ie) {
		return false, fmt.Errorf("intake: fire %s: %w", eventID, err)
	}
	// The event cannot apply (e.g. a held rescind past its grace window): record why and move
	// on, so one bad row does not block the others. GetHistory shows it.
	tx.Rollback(ctx)
	if _, err := s.pool.Exec(ctx, `UPDATE scheduled_events SET state = 'failed', error = $2, done_at = $3 WHERE event_id = $1 AND state = 'scheduled'`,
		eventID, ie.Error(), now); err != nil {
		return false, err
	}
	s.log.WarnContext(ectx, "held event failed", "event_id", eventID, "err", ie.Error())
	return true, nil
}

// contractEndID is the id of the leaver generated when a non-employee's end date passes.
// A worker's end date ends their contract once: the check is on the history (an applied
// contract_end with that end date), so a rescinded contract end does not end again. The id
// is stable; only if a row with it exists that did not apply (a contract end that a version
// before this rule recorded as stale) does a retry get a suffix of its own.
func contractEndID(worker, endDate string) string {
	return "intake:contract_end:" + worker + ":" + endDate
}

// endContracts turns every non-employee whose end date has passed (in Config.Location) and
// who is not terminated into a leaver (hr_event_type contract_end, reason contract_end),
// whether or not an HR event arrives, and whatever put the end date in the past: the date
// passing, a change that moved it back, or time that passed while tenure was down. The
// contract end takes effect at the end of the end date, or when tenure learned of it if the
// record is newer than that (a department change that set yesterday's end date), so it is
// never older than the record and always applies. If it cannot apply now (the database
// fails), nothing is recorded and the next tick tries again.
func (s *Service) endContracts(ctx context.Context) (int, error) {
	now := s.now().In(s.cfg.Location)
	today := now.Format(time.DateOnly)
	rows, err := s.pool.Query(ctx, `SELECT w.worker_id, w.end_date FROM workers w
		WHERE w.worker_type <> 'employee' AND w.status <> 'terminated' AND w.end_date <> '' AND w.end_date < $1
		AND NOT EXISTS (SELECT 1 FROM worker_history h WHERE h.worker_id = w.worker_id AND h.hr_event_type = 'contract_end'
			AND h.applied AND h.record->>'end_date' = w.end_date)
		ORDER BY w.end_date, w.worker_id LIMIT $2`, today, maxPerTick)
	if err != nil {
		return 0, fmt.Errorf("intake: find ended contracts: %w", err)
	}
	type ended struct{ id, end string }
	var list []ended
	for rows.Next() {
		var e ended
		if err := rows.Scan(&e.id, &e.end); err != nil {
			rows.Close()
			return 0, err
		}
		list = append(list, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	n := 0
	for _, e := range list {
		d, err := time.ParseInLocation(time.DateOnly, e.end, s.cfg.Location)
		if err != nil {
			continue // validate() admits only dates; a hand-edited row is skipped
		}
		endEff := d.AddDate(0, 0, 1)
		id := contractEndID(e.id, e.end)
		c := change{hrType: "contract_end", typ: eventTypes["contract_end"], worker: &eventsv1.Worker{WorkerId: e.id, EndDate: e.end}, reason: "contract_end"}
		skipped := false
		received := s.now()
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			// Another instance may have ended it since the scan: re-check under the row lock.
			var (
				again   bool
				curEff  time.Time
				idTaken bool
			)
			if err := tx.QueryRow(ctx, `SELECT w.status <> 'terminated' AND w.end_date = $2 AND NOT EXISTS
				(SELECT 1 FROM worker_history h WHERE h.worker_id = w.worker_id AND h.hr_event_type = 'contract_end'
					AND h.applied AND h.record->>'end_date' = w.end_date),
				w.effective_time, EXISTS (SELECT 1 FROM worker_history h WHERE h.event_id = $3)
				FROM workers w WHERE w.worker_id = $1 FOR UPDATE`,
				e.id, e.end, id).Scan(&again, &curEff, &idTaken); errors.Is(err, pgx.ErrNoRows) || (err == nil && !again) {
				skipped = true
				return nil
			} else if err != nil {
				return err
			}
			eventID := id
			if idTaken {
				eventID = fmt.Sprintf("%s:%d", id, received.UnixNano())
			}
			eff := endEff
			if curEff.After(eff) {
				eff = curEff
			}
			ar, err := s.apply(ctx, tx, pending{source: "intake", sourceEventID: strings.TrimPrefix(eventID, "intake:"), eventID: eventID, c: c,
				eff: eff, received: received, actor: "tenure/intake", cur: nil})
			if err != nil {
				return err
			}
			if !ar.publish {
				// Cannot happen for a worker who is not terminated, at or after the record's
				// time; if it does, roll back so the next tick tries again.
				return fmt.Errorf("contract end of %s did not apply: %s", e.id, ar.reason())
			}
			return pgstore.Enqueue(ctx, tx, ar.ev)
		})
		if err != nil {
			return n, fmt.Errorf("intake: contract end of %s: %w", e.id, err)
		}
		if skipped {
			continue
		}
		s.log.InfoContext(ctx, "contract ended", "worker_id", e.id, "end_date", e.end, "event_id", id)
		n++
	}
	return n, nil
}
