package intake

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
)

// Group commit.
//
// Webhook deliveries that arrive while batches are being stored wait in a queue; the next
// batch takes them all (up to maxGroup) and stores them together: one Postgres transaction, three
// round trips (receipts and row locks; the events published to JetStream asynchronously, all
// in flight at once; the registry and history writes), one commit. Each delivery still gets its
// own answer: 2xx only after its PubAck and the commit, 409/422 for its own bad input, 503 when
// its publish failed. A single delivery waits for nobody: a batch starts at once while fewer
// than maxBatches are in flight, so under light load a batch holds one delivery.
//
// Per delivery, the guarantees are the ones a transaction of its own would give:
//   - the receipt row (primary key source + webhook-id) is the replay guard; a second delivery
//     of a webhook-id, in the same batch or a later one, sees it and is a duplicate (or a 409
//     when its body differs);
//   - the worker's row is locked FOR UPDATE before the event is computed, and a batch holds at
//     most one delivery per worker, so events of one worker apply in arrival order, each
//     seeing the previous one's record;
//   - a delivery whose publish fails has its receipt removed in the same transaction and
//     nothing else written: it answers 503 and the HRIS retry is processed afresh;
//   - commit fails after PubAcks → every delivery of the batch answers 503 and the retries are
//     deduplicated by event id (Nats-Msg-Id "intake:<source>:<webhook-id>" in JetStream's
//     window, ce-id in each consumer's inbox after it), as before.
//
// A termination_rescinded travels alone: it cancels held terminations before it knows whether
// it is acceptable, and only a transaction of its own can take that back.
const maxGroup = 128

// ingestItem is one validated event of a delivery waiting for its batch.
type ingestItem struct {
	ctx  context.Context // the request's, for its trace context
	d    Delivery
	c    change
	res  ingestResult
	err  error
	done chan struct{}

	sum      [32]byte
	key      []byte // contentKey
	inserted bool   // its receipt is new: not a duplicate
	// contentDup: its receipt did not insert because an earlier event had the same content
	// under another webhook-id; the new id is recorded as a duplicate of that event.
	contentDup bool
	plan       applyPlan
	planned    bool      // plan holds what to write
	msg        *nats.Msg // its event, when it has one to publish
	undo       bool      // remove its receipt: it failed alone
}

// committer queues deliveries and stores them in batches, at most maxBatches at once so one
// batch's Postgres work overlaps another's wait for its PubAcks. Batches in flight never share
// a worker: a worker's next event waits until the batch holding its previous one committed.
type committer struct {
	s       *Service
	mu      sync.Mutex
	queue   []*ingestItem
	running int
	busy    map[string]bool // workers of the batches in flight
}

const maxBatches = 2

// ingest records and publishes one validated event, all or nothing, in a group commit.
func (s *Service) ingest(ctx context.Context, d Delivery, c change) (ingestResult, error) {
	it := &ingestItem{ctx: ctx, d: d, c: c, done: make(chan struct{})}
	s.commits.submit(it)
	<-it.done
	return it.res, it.err
}

func (g *committer) submit(it *ingestItem) {
	g.mu.Lock()
	g.queue = append(g.queue, it)
	start := g.running < maxBatches
	if start {
		g.running++
	}
	g.mu.Unlock()
	if start {
		go g.lead()
	}
}

// lead stores batches until nothing in the queue can go.
func (g *committer) lead() {
	var prev []*ingestItem
	for {
		g.mu.Lock()
		for _, it := range prev {
			delete(g.busy, it.c.worker.WorkerId)
		}
		batch := g.take()
		if len(batch) == 0 {
			g.running--
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.s.commitBatch(batch)
		for _, it := range batch {
			close(it.done)
		}
		prev = batch
	}
}

// take removes the next batch from the queue: in arrival order, at most one event per worker
// and none of a worker busy in another batch (a worker's later events wait, keeping their
// order), a rescind alone. Called with mu held.
func (g *committer) take() []*ingestItem {
	if g.busy == nil {
		g.busy = map[string]bool{}
	}
	var batch, rest []*ingestItem
	held := map[string]bool{}
	for i, it := range g.queue {
		id := it.c.worker.WorkerId
		rescind := it.c.hrType == "termination_rescinded"
		switch {
		case len(batch) == maxGroup:
			rest = append(rest, g.queue[i:]...)
			g.queue = rest
			return g.claim(batch)
		case held[id] || g.busy[id]:
			held[id] = true
			rest = append(rest, it)
		case rescind && len(batch) > 0:
			held[id] = true
			rest = append(rest, it)
		case rescind:
			g.queue = append(rest, g.queue[i+1:]...)
			return g.claim([]*ingestItem{it})
		default:
			held[id] = true
			batch = append(batch, it)
		}
	}
	g.queue = rest
	return g.claim(batch)
}

func (g *committer) claim(batch []*ingestItem) []*ingestItem {
	for _, it := range batch {
		g.busy[it.c.worker.WorkerId] = true
	}
	return batch
}

// commitBatch stores and publishes a batch; every item ends with res or err set.
func (s *Service) commitBatch(batch []*ingestItem) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout+30*time.Second)
	defer cancel()
	if err := s.storeBatch(ctx, batch); err != nil {
		for _, it := range batch {
			if it.err == nil || len(batch) == 1 {
				it.err = err
			}
		}
	}
}

func (s *Service) storeBatch(ctx context.Context, batch []*ingestItem) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("intake: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	// Round trip 1: the receipts (the replay guard) and the workers' row locks, taken in
	// worker-id order.
	b := &pgx.Batch{}
	ids := make([]string, len(batch))
	for i, it := range batch {
		d, id := it.d, it.c.worker.WorkerId
		ids[i] = id
		it.sum = sha256.Sum256(d.Body)
		it.key = contentKey(d.Source, it.c, d.Received)
		it.res.eventID = eventID(d.Source, d.WebhookID)
		it.res.subject = events.Subject(SubjectPrefix, it.c.typ.token, id)
		// No conflict target: the webhook-id (the delivery) and the content key (the event)
		// are both unique, and either makes this a duplicate.
		b.Queue(`INSERT INTO receipts (source, webhook_id, body_sha256, event_id, worker_id, subject, received_at, content_key)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
			d.Source, d.WebhookID, it.sum[:], it.res.eventID, id, it.res.subject, d.Received, it.key)
	}
	b.Queue("SELECT "+workerColumns+" FROM workers WHERE worker_id = ANY($1) ORDER BY worker_id FOR UPDATE", ids)
	// Workers with changes waiting for their hire (rare): a hire of one applies them after it.
	b.Queue(`SELECT DISTINCT worker_id FROM scheduled_events WHERE worker_id = ANY($1)
		AND (state = 'waiting' OR (state = 'scheduled' AND effective_time <= $2))`, ids, s.now())
	waiting := map[string]bool{}
	cur := map[string]*record{}
	err = func() error {
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		for _, it := range batch {
			tag, err := br.Exec()
			if err != nil {
				return fmt.Errorf("intake: insert receipt: %w", err)
			}
			it.inserted = tag.RowsAffected() == 1
		}
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("intake: load workers: %w", err)
		}
		for rows.Next() {
			r, err := scanRecord(rows)
			if err != nil {
				return fmt.Errorf("intake: load workers: %w", err)
			}
			cur[r.worker.WorkerId] = r
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("intake: load workers: %w", err)
		}
		rows, err = br.Query()
		if err != nil {
			return fmt.Errorf("intake: load waiting events: %w", err)
		}
		var w string
		if _, err := pgx.ForEachRow(rows, []any{&w}, func() error { waiting[w] = true; return nil }); err != nil {
			return fmt.Errorf("intake: load waiting events: %w", err)
		}
		return br.Close()
	}()
	if err != nil {
		return err
	}
	if err := readDuplicates(ctx, tx, batch); err != nil {
		return err
	}

	// Decide each event; publish the ones that changed something, all in flight together.
	now, woke := s.now(), false
	for _, it := range batch {
		if !it.inserted {
			continue
		}
		d, c := it.d, it.c
		eff := c.effectiveTime
		if eff.IsZero() {
			eff = d.Received
		}
		if eff.After(now) {
			// Held until its effective time; Run publishes it through the outbox.
			if err := holdEvent(trace.ContextWithSpan(ctx, trace.SpanFromContext(it.ctx)), tx, d, c, it.res.eventID, eff); err != nil {
				return err
			}
			it.res.scheduled, it.res.effective, woke = true, eff, true
			continue
		}
		pl, err := s.plan(ctx, tx, pending{source: d.Source, sourceEventID: d.WebhookID, eventID: it.res.eventID, c: c,
			eff: eff, received: d.Received, actor: "hris:" + d.Source, cur: cur[c.worker.WorkerId], loaded: true})
		var ie *InputError
		if errors.As(err, &ie) && len(batch) > 1 {
			// Only plans without writes of their own fail like this in a shared batch.
			it.err, it.undo = err, true
			continue
		}
		if err != nil {
			return err
		}
		if pl.waitForHire {
			pl.p.headers = traceHeaders(it.ctx)
		}
		it.plan, it.planned = pl, true
		if !pl.publish {
			continue
		}
		if it.msg, err = events.Msg(it.ctx, pl.ev); err != nil {
			return err
		}
		it.msg.Header.Set(jetstream.ExpectedStreamHeader, natsx.EventsStream)
	}
	s.publishAll(ctx, batch)
	if !slices.ContainsFunc(batch, func(it *ingestItem) bool { return !it.undo }) {
		// Nothing of the batch stays (a rescind whose publish failed, say): roll back what its
		// plans did in the transaction too (the held events a rescind cancelled or restored).
		return nil
	}

	// Round trip 3: the registry and history writes, and the receipts' final state.
	b = &pgx.Batch{}
	for _, it := range batch {
		d := it.d
		switch {
		case it.contentDup:
			// The new delivery id answers as a duplicate of the original from now on.
			b.Queue(`INSERT INTO receipts (source, webhook_id, body_sha256, event_id, worker_id, subject, received_at, duplicate_of)
				VALUES ($1, $2, $3, $4, $5, '', $6, $7) ON CONFLICT DO NOTHING`,
				d.Source, d.WebhookID, it.sum[:], eventID(d.Source, d.WebhookID), it.c.worker.WorkerId, d.Received, it.res.eventID)
		case it.undo:
			b.Queue(`DELETE FROM receipts WHERE source = $1 AND webhook_id = $2`, d.Source, d.WebhookID)
		case it.planned:
			if err := it.plan.queueWrites(b); err != nil {
				return err
			}
			if it.plan.publish {
				b.Queue(`UPDATE receipts SET stream_seq = $3, subject = $4 WHERE source = $1 AND webhook_id = $2`,
					d.Source, d.WebhookID, int64(it.res.seq), it.plan.ev.Subject)
			} else {
				b.Queue(`UPDATE receipts SET subject = '' WHERE source = $1 AND webhook_id = $2`, d.Source, d.WebhookID)
			}
		}
	}
	if b.Len() > 0 {
		err = func() error {
			br := tx.SendBatch(ctx, b)
			defer br.Close()
			for _, it := range batch {
				if it.planned && !it.undo {
					if err := it.plan.readWrites(br); err != nil {
						return err
					}
				}
				if it.undo || it.planned || it.contentDup {
					if _, err := br.Exec(); err != nil {
						return fmt.Errorf("intake: update receipt: %w", err)
					}
				}
			}
			return br.Close()
		}()
		if err != nil {
			return fmt.Errorf("%w (published events are deduplicated on retry)", err)
		}
	}
	// Changes that waited for a hire of this batch apply right after it, in this transaction;
	// their events go out through the outbox, after the hire's.
	released := false
	for _, it := range batch {
		if it.planned && !it.undo && it.plan.writeRecord && it.plan.joiner && waiting[it.c.worker.WorkerId] {
			evs, err := s.releaseWaiting(ctx, tx, it.c.worker.WorkerId, it.res.eventID)
			if err != nil {
				return err
			}
			if err := pgstore.Enqueue(ctx, tx, evs...); err != nil {
				return fmt.Errorf("intake: enqueue the changes released by %s: %w", it.res.eventID, err)
			}
			released = released || len(evs) > 0
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("intake: commit (published events are deduplicated on retry): %w", err)
	}
	if released {
		s.relay.Poke()
	}
	for _, it := range batch {
		if it.planned {
			it.res.stale = it.plan.stale
			it.res.effect, it.res.reason = it.plan.effect(), it.plan.reason()
			it.res.waiting = it.plan.waitForHire
			if it.plan.publish {
				it.res.subject = it.plan.ev.Subject
			} else {
				it.res.subject = ""
			}
		}
	}
	if woke {
		s.wakeScheduler()
	}
	return nil
}

// receiptOf reads the stored receipt of a webhook-id ($2) or else of the content key ($3):
// body hash, event id, subject, stream sequence, the event it duplicated, and whether it is
// the webhook-id's own.
const receiptOf = `(SELECT body_sha256, event_id, subject, stream_seq, duplicate_of, true FROM receipts WHERE source = $1 AND webhook_id = $2)
	UNION ALL
	(SELECT body_sha256, event_id, subject, stream_seq, duplicate_of, webhook_id = $2 FROM receipts WHERE source = $1 AND content_key = $3)
	ORDER BY 6 DESC LIMIT 1`

// readDuplicates answers the items whose receipt already existed: a duplicate with the
// original's event, or errConflict when the body differs.
func readDuplicates(ctx context.Context, tx pgx.Tx, batch []*ingestItem) error {
	b := &pgx.Batch{}
	for _, it := range batch {
		if !it.inserted {
			b.Queue(receiptOf, it.d.Source, it.d.WebhookID, it.key)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	br := tx.SendBatch(ctx, b)
	defer br.Close()
	for _, it := range batch {
		if it.inserted {
			continue
		}
		var p priorReceipt
		if err := br.QueryRow().Scan(&p.sum, &p.eventID, &p.subject, &p.seq, &p.dupOf, &p.sameID); err != nil {
			return fmt.Errorf("intake: read receipt: %w", err)
		}
		it.res, it.err = p.result(it.sum[:])
		it.contentDup = !p.sameID
	}
	return br.Close()
}

// publishAll publishes the batch's events, all in flight at once (natsx.GroupPublisher, at
// most PublishTimeout in all), and sets each item's stream sequence; an item whose publish
// failed is undone (503, nothing of it stored).
//
// (JetStream's atomic batch publish would store them with one fsync, but it stages each batch
// in a store of its own on disk first; measured here it was slower than this for batches of
// the sizes a webhook load produces, so the publisher's AtomicMin stays 0.)
func (s *Service) publishAll(ctx context.Context, batch []*ingestItem) {
	var pub []*ingestItem
	var msgs []*nats.Msg
	for _, it := range batch {
		if it.msg != nil && !it.undo {
			pub, msgs = append(pub, it), append(msgs, it.msg)
		}
	}
	for i, r := range s.pub.PublishAll(ctx, msgs) {
		if r.Err != nil {
			pub[i].fail(r.Err)
			continue
		}
		pub[i].res.seq = r.Seq
	}
}

// fail marks an item whose publish failed: it answers 503 and its receipt is removed.
func (it *ingestItem) fail(err error) {
	it.err, it.undo, it.planned = fmt.Errorf("%w: %s: %w", errPublish, it.msg.Subject, err), true, false
}
