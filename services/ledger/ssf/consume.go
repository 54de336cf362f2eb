package ssf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// ConsumerSpec is the transmitter's durable consumer: revocations only, from the start of
// the stream. A receiver's stream only gets revocations that occurred after it was created,
// and delivered SETs are remembered as long as the stream keeps revocations, so a consumer
// that is recreated (and reads the stream again) loses nothing and repeats nothing. A
// leaver's revocations come in bursts, so a few are handled at once: SETs carry no order
// (RFC 8935).
func ConsumerSpec() natsx.ConsumerSpec {
	return natsx.ConsumerSpec{Durable: Durable, FilterSubjects: []string{"tenure.revocation.>"}, AckWait: 30 * time.Second, Concurrency: 4}
}

// consume runs the durable consumer until ctx ends. If the subscription ends on its own (the
// consumer was deleted, say), it recreates the consumer after a back-off, as the ledger does:
// the transmitter must not stop hearing revocations quietly.
func (t *Transmitter) consume(ctx context.Context) error {
	c, err := natsx.NewConsumer(ctx, t.js, ConsumerSpec(), t.handle, t.log)
	if err != nil {
		if ctx.Err() != nil {
			// Stopped while creating the consumer (a shutdown right after start): not a failure.
			return nil
		}
		return fmt.Errorf("ssf: consumer %s: %w", Durable, err)
	}
	delay := time.Second
	for {
		err := c.Run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		t.log.ErrorContext(ctx, "SSF consumer stopped; recreating it", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
		if nc, err := natsx.NewConsumer(ctx, t.js, ConsumerSpec(), t.handle, t.log); err != nil {
			t.log.ErrorContext(ctx, "recreate SSF consumer", "err", err)
		} else {
			c, delay = nc, time.Second
		}
	}
}

// handle turns one revocation into a SET for every stream that should see it, stored in
// one transaction before the ack.
func (t *Transmitter) handle(ctx context.Context, msg jetstream.Msg) error {
	rev := &eventsv1.Revocation{}
	if err := proto.Unmarshal(msg.Data(), rev); err != nil {
		return natsx.Permanent(fmt.Errorf("decode revocation: %w", err))
	}
	at := rev.GetOccurredAt().AsTime()
	if rev.GetOccurredAt() == nil {
		if md, err := msg.Metadata(); err == nil {
			at = md.Timestamp
		}
	}
	push, n, err := t.enqueue(ctx, rev, at)
	if err != nil {
		return err
	}
	if n > 0 {
		t.queued.fire() // long polls
	}
	// The SETs for push streams were stored as claimed by this process: push them now,
	// without another round trip to claim them.
	for _, p := range push {
		t.pushNow(p)
	}
	return nil
}

// enqueue stores the SETs of one revocation, one per stream that requested its event type and
// whose subjects select the worker. Queueing the same revocation again stores nothing more
// (the jti is derived). It returns the new SETs this process may push at once (enabled push
// streams, stored under a lease) and how many SETs were new. Two round trips: read streams
// and subjects, then one INSERT of every SET (atomic on its own), because this sits on the
// path from a verified disable to the receiver.
func (t *Transmitter) enqueue(ctx context.Context, rev *eventsv1.Revocation, at time.Time) ([]pending, int, error) {
	typ, payload, ok := eventOf(rev)
	if !ok || rev.GetWorkerId() == "" {
		return nil, 0, nil
	}
	if rev.GetRevocationId() == "" {
		return nil, 0, natsx.Permanent(errors.New("revocation without revocation_id"))
	}
	streams, subjects, err := t.audience(ctx, typ, rev, at)
	if err != nil || len(streams) == 0 {
		return nil, 0, err
	}
	var (
		ids, jtis, tokens []string
		leases            []int64
		byStream          = map[string]pending{}
	)
	for _, s := range streams {
		sub, ok := subjects[s.ID]
		switch {
		case ok && !sub.included:
			continue // the receiver removed this worker
		case !ok && t.cfg.DefaultSubjects == "NONE":
			continue
		case !ok:
			sub.subject = defaultSubject(rev.GetWorkerId(), rev.GetEmail(), t.cfg.Tenant, rev.GetSystem())
		}
		jti := setJTI(s.ID, rev.GetRevocationId(), typ)
		token, err := t.sign(s.Aud, jti, rev.GetRevocationId(), sub.subject, typ, payload)
		if err != nil {
			return nil, 0, fmt.Errorf("sign SET: %w", err)
		}
		var lease time.Duration
		if s.Method == MethodPush && s.Status == "enabled" && t.pushCtx() != nil {
			lease = t.pushLease()
			byStream[s.ID] = pending{streamID: s.ID, jti: jti, token: token, url: s.EndpointURL, auth: s.AuthHeader}
		}
		ids, jtis, tokens, leases = append(ids, s.ID), append(jtis, jti), append(tokens, token), append(leases, lease.Milliseconds())
	}
	if len(ids) == 0 {
		return nil, 0, nil
	}
	rows, err := t.pool.Query(ctx, `INSERT INTO ssf.sets (stream_id, jti, event_type, token, next_attempt_at)
		SELECT u.stream_id, u.jti, $5, u.token, now() + u.lease_ms * interval '1 millisecond'
		FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(stream_id, jti, token, lease_ms)
		ON CONFLICT (stream_id, jti) DO NOTHING RETURNING stream_id`, ids, jtis, tokens, leases, typ)
	if err != nil {
		return nil, 0, err
	}
	added, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, 0, err
	}
	var push []pending
	for _, id := range added {
		if p, ok := byStream[id]; ok {
			push = append(push, p)
		}
	}
	return push, len(added), nil
}

// audience reads, in one round trip, the streams that want this event type and existed when
// the revocation occurred (not disabled: paused ones keep their SETs until enabled again) and
// the subjects receivers added or removed for the worker.
func (t *Transmitter) audience(ctx context.Context, typ string, rev *eventsv1.Revocation, at time.Time) ([]*stream, map[string]streamSubject, error) {
	b := &pgx.Batch{}
	var streams []*stream
	b.Queue("SELECT "+streamColumns+" FROM ssf.streams WHERE status <> 'disabled' AND created_at <= $1 ORDER BY stream_id", at).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			s, err := scanStream(rows)
			if err != nil {
				return err
			}
			if contains(s.eventsDelivered(), typ) {
				streams = append(streams, s)
			}
		}
		return rows.Err()
	})
	subjects := map[string]streamSubject{}
	// Included rows first, so that an explicit removal in another form wins.
	b.Queue("SELECT stream_id, subject, included FROM ssf.subjects WHERE subject_key = ANY($1) ORDER BY included DESC, subject_key",
		workerKeys(rev.GetWorkerId(), rev.GetEmail(), t.cfg.Tenant)).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var (
				id  string
				sub Subject
				inc bool
			)
			if err := rows.Scan(&id, &sub, &inc); err != nil {
				return err
			}
			subjects[id] = streamSubject{subject: sub, included: inc}
		}
		return rows.Err()
	})
	if err := t.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, err
	}
	return streams, subjects, nil
}

type streamSubject struct {
	subject  Subject
	included bool
}
