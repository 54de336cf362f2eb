package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// GroupPublisher publishes groups of messages to the events stream, in order.
//
// Why groups: with sync_interval: always, an R1 stream fsyncs once per stored message, so one
// stream takes a few thousand messages a second however many publishers it has. A JetStream
// atomic batch (NATS 2.12+, stream option allow_atomic) is stored with one fsync for the whole
// batch, but the server stages every batch on disk first, which costs a few milliseconds per
// batch. So a group goes out as one atomic batch only when it holds at least AtomicMin
// messages (a backlog: a mass termination's commands and results), and message by message
// otherwise. With periodic fsync, staging costs more than it saves: leave AtomicMin at 0.
//
// Each message carries its own Nats-Msg-Id, so whatever path a message takes, a retry is
// deduplicated. A batch the server refuses (a duplicate inside it, too many batches in flight,
// a timeout) is published again message by message, where a duplicate is a success.
type GroupPublisher struct {
	js  jetstream.JetStream
	log *slog.Logger

	// AtomicMin is the smallest group sent as an atomic batch; 0 never batches.
	AtomicMin int
	// Timeout bounds waiting for the acknowledgements of one group.
	Timeout time.Duration

	refused atomic.Bool // the stream or the server refuses atomic batches: stop trying
}

// NewGroupPublisher returns a publisher that sends every message on its own until AtomicMin is set.
func NewGroupPublisher(js jetstream.JetStream, log *slog.Logger) *GroupPublisher {
	if log == nil {
		log = slog.Default()
	}
	return &GroupPublisher{js: js, log: log, Timeout: 10 * time.Second}
}

// AtomicMinSyncAlways is the AtomicMin to use when JetStream fsyncs every write. Measured
// on 2 cores (R1, sync_interval: always): one message at a time, about 3,700 messages/s;
// atomic batches of 8, 32, 64 and 128 messages, 2,200, 7,600, 13,500 and 18,000 messages/s.
// Staging costs about 3.5 ms a batch, so below ~16 messages batching loses.
const AtomicMinSyncAlways = 32

// maxAtomicBatch stays under the server's default limit of 1,000 messages per batch.
const maxAtomicBatch = 1000

// Published is JetStream's answer for one message: the stream sequence it is stored at (for a
// duplicate, the first copy's), or why it is not.
type Published struct {
	Seq uint64
	Err error
}

// PublishAll publishes msgs and returns, per message, its sequence once JetStream stored it
// (or recognised it as a duplicate), or the error. Every message must have a Nats-Msg-Id; if
// one has none, nothing is published.
func (p *GroupPublisher) PublishAll(ctx context.Context, msgs []*nats.Msg) []Published {
	res := make([]Published, len(msgs))
	for i, m := range msgs {
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			err := fmt.Errorf("natsx: message %d (%s) has no %s: nothing of its group was published", i, m.Subject, jetstream.MsgIDHeader)
			for j := range res {
				res[j].Err = err
			}
			return res
		}
	}
	if len(msgs) == 0 {
		return res
	}
	if p.AtomicMin > 0 && len(msgs) >= p.AtomicMin && !p.refused.Load() {
		for start := 0; start < len(msgs); start += maxAtomicBatch {
			end := min(start+maxAtomicBatch, len(msgs))
			last, err := p.publishAtomic(ctx, msgs[start:end])
			if err != nil {
				// This part goes out message by message; so does the rest, to keep the order.
				p.publishEach(ctx, msgs[start:], res[start:])
				break
			}
			// A batch is stored contiguously, ending at the commit's sequence.
			for i := start; i < end; i++ {
				res[i].Seq = last - uint64(end-1-i)
			}
		}
		return res
	}
	p.publishEach(ctx, msgs, res)
	return res
}

// publishAtomic publishes msgs as one atomic batch and returns the last one's sequence.
func (p *GroupPublisher) publishAtomic(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	// No acknowledgement of the first message: the commit's answer says it all, and one round
	// trip per batch is the point.
	ack, err := jetstreamext.PublishMsgBatch(ctx, p.js, msgs, jetstreamext.BatchFlowControl{AckFirst: false})
	if err == nil {
		return ack.Sequence, nil
	}
	for _, m := range msgs {
		m.Header.Del(jetstreamext.BatchIDHeader)
		m.Header.Del(jetstreamext.BatchSeqHeader)
		m.Header.Del(jetstreamext.BatchCommitHeader)
	}
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.ErrorCode(errAtomicPublishDisabled):
		if !p.refused.Swap(true) {
			p.log.Warn("the events stream does not allow atomic batches; publishing message by message (run `tenure setup` to update the stream)")
		}
	case errors.Is(err, jetstreamext.ErrInvalidBatchAck):
		// A server before NATS 2.12 stores the messages one by one and answers the last with a
		// plain PubAck; the republish below is deduplicated.
		if !p.refused.Swap(true) {
			p.log.Warn("the NATS server does not support atomic batches (2.12 or later does); publishing message by message")
		}
	default:
		p.log.Debug("atomic batch refused, publishing message by message", "messages", len(msgs), "err", err)
	}
	return 0, err
}

// errAtomicPublishDisabled is the server's JSAtomicPublishDisabledErr.
const errAtomicPublishDisabled = 10174

// publishEach publishes the messages all in flight at once and waits for their answers, at
// most Timeout in all; past it, it takes the answers that have arrived and waits for no more.
func (p *GroupPublisher) publishEach(ctx context.Context, msgs []*nats.Msg, res []Published) {
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			res[i].Err = fmt.Errorf("publish %s: %w", m.Subject, err)
			continue
		}
		futures[i] = f
	}
	timeout := time.NewTimer(p.Timeout)
	defer timeout.Stop()
	expired := false
	for i, f := range futures {
		if f == nil {
			continue
		}
		if expired {
			select {
			case a := <-f.Ok():
				res[i].Seq = a.Sequence
			case err := <-f.Err():
				res[i].Err = err
			default:
				res[i].Err = context.DeadlineExceeded
			}
			continue
		}
		select {
		case a := <-f.Ok():
			res[i].Seq = a.Sequence
		case err := <-f.Err():
			res[i].Err = err
		case <-timeout.C:
			expired, res[i].Err = true, context.DeadlineExceeded
		case <-ctx.Done():
			expired, res[i].Err = true, ctx.Err()
		}
	}
}
