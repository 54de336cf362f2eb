package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
)

// Enqueue writes events to the outbox in tx. They are published by the Relay after the
// transaction commits, and never if it rolls back.
func Enqueue(ctx context.Context, tx pgx.Tx, evs ...events.Event) error {
	out := make([]Outgoing, len(evs))
	for i, e := range evs {
		out[i] = Outgoing{Ctx: ctx, Event: e}
	}
	return EnqueueAll(ctx, tx, out)
}

// Outgoing is an event and the context whose trace it continues.
type Outgoing struct {
	Ctx   context.Context
	Event events.Event
}

// EnqueueAll is Enqueue for events of several causes (a group commit), each carrying its own
// cause's trace context. All rows go in one statement, in order.
func EnqueueAll(ctx context.Context, tx pgx.Tx, evs []Outgoing) error {
	if len(evs) == 0 {
		return nil
	}
	ids, subjects, headers := make([]string, len(evs)), make([]string, len(evs)), make([]string, len(evs))
	payloads := make([][]byte, len(evs))
	for i, o := range evs {
		e := o.Event
		if e.ID == "" {
			e.ID = events.NewID()
		}
		if e.Subject == "" {
			return errors.New("pgstore: outbox event without subject")
		}
		data, err := proto.Marshal(e.Payload)
		if err != nil {
			return fmt.Errorf("pgstore: marshal %s: %w", e.Subject, err)
		}
		h, err := json.Marshal(events.Headers(o.Ctx, e))
		if err != nil {
			return err
		}
		ids[i], subjects[i], headers[i], payloads[i] = e.ID, e.Subject, string(h), data
	}
	// unnest keeps the arrays' order, so the rows' seq (the publish order) follows evs.
	_, err := tx.Exec(ctx, `INSERT INTO outbox (id, subject, headers, payload)
		SELECT id, subject, headers::jsonb, payload FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[]) AS e(id, subject, headers, payload)
		ON CONFLICT (id) DO NOTHING`, ids, subjects, headers, payloads)
	return err
}

// Relay publishes the outbox to JetStream in commit order. Each event goes out with
// Nats-Msg-Id = its outbox id and is deleted only after its PubAck, so a crash between
// publish and delete republishes it and JetStream's dedupe (and the consumers' inbox) keep
// it at one effect. Several relays of one service may run: rows are claimed with SKIP LOCKED.
type Relay struct {
	pool     *pgxpool.Pool
	pub      *natsx.GroupPublisher
	log      *slog.Logger
	poke     chan struct{}
	batch    int
	interval time.Duration

	// afterPublish, when set, runs between the PubAcks and the delete (tests use it to
	// simulate a crash there).
	afterPublish func() error
}

// NewRelay returns a relay for the outbox of the pool's schema.
func NewRelay(pool *pgxpool.Pool, js jetstream.JetStream, log *slog.Logger) *Relay {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "outbox-relay")
	return &Relay{pool: pool, pub: natsx.NewGroupPublisher(js, log), log: log, poke: make(chan struct{}, 1), batch: MaxRound, interval: time.Second}
}

// PublishInAtomicBatches sends a round of at least min rows as one JetStream atomic batch
// (natsx.GroupPublisher.AtomicMin); 0, the default, publishes row by row. A round holds at
// most MaxRound rows.
func (r *Relay) PublishInAtomicBatches(min int) { r.pub.AtomicMin = min }

// MaxRound is the most rows one Flush publishes: as many as one JetStream atomic batch may
// hold, since the server stages each batch on disk at a cost per batch. A mass termination's
// backlog fills the rounds: with 4,000 leavers, staging took 1.7 CPU-s in rounds of at most
// 256 and 0.6 in rounds of at most 1,000.
const MaxRound = 1000

// Poke tells the relay that a transaction has committed new outbox rows. Without a poke the
// relay still polls every second, which is how rows left by a crash get out after a restart.
func (r *Relay) Poke() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// Run publishes until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		for {
			n, err := r.Flush(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.log.Warn("publish outbox", "err", err)
				break
			}
			if n < r.batch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.poke:
		case <-t.C:
		}
	}
}

type outboxRow struct {
	seq     int64
	id      string
	subject string
	headers []byte
	payload []byte
}

// Flush publishes one batch of pending rows and returns how many it published.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "SELECT seq, id, subject, headers, payload FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED", r.batch)
		if err != nil {
			return err
		}
		var batch []outboxRow
		for rows.Next() {
			var o outboxRow
			if err := rows.Scan(&o.seq, &o.id, &o.subject, &o.headers, &o.payload); err != nil {
				return err
			}
			batch = append(batch, o)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		msgs := make([]*nats.Msg, len(batch))
		for i, o := range batch {
			var h nats.Header
			if err := json.Unmarshal(o.headers, &h); err != nil {
				return fmt.Errorf("outbox row %d: headers: %w", o.seq, err)
			}
			h.Set(jetstream.MsgIDHeader, o.id)
			msgs[i] = &nats.Msg{Subject: o.subject, Header: h, Data: o.payload}
		}
		seqs := make([]int64, 0, len(batch))
		for i, res := range r.pub.PublishAll(ctx, msgs) {
			if err := res.Err; err != nil {
				// Keep order: stop at the first failure; later rows go out next round
				// (JetStream dedupes any that did land).
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.log.Warn("outbox publish failed", "subject", batch[i].subject, "err", err)
				break
			}
			seqs = append(seqs, batch[i].seq)
		}
		if r.afterPublish != nil {
			if err := r.afterPublish(); err != nil {
				return err
			}
		}
		if len(seqs) == 0 {
			return errors.New("no outbox row acknowledged")
		}
		if _, err := tx.Exec(ctx, "DELETE FROM outbox WHERE seq = ANY($1)", seqs); err != nil {
			return err
		}
		n = len(seqs)
		return nil
	})
	return n, err
}

// Pending counts rows not yet published.
func Pending(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&n)
	return n, err
}
