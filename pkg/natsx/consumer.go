package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/telemetry"
)

// Handler handles one message. Returning nil acks it; an error naks it with back-off until
// MaxDeliver, then it is dead-lettered. Wrap an error with Permanent to dead-letter at once.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// ErrPermanent marks an error that no retry can fix (a malformed payload, say).
var ErrPermanent = errors.New("permanent failure")

// Permanent wraps err so the consumer dead-letters the message without retrying.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// ConsumerSpec configures a durable pull consumer on the events stream.
type ConsumerSpec struct {
	Durable        string
	Stream         string // default EventsStream
	FilterSubjects []string
	// AckWait is how long a delivery may take before the server redelivers it.
	AckWait time.Duration
	// BackOff is the delay before each redelivery after a failure; the last value repeats.
	BackOff []time.Duration
	// MaxDeliver attempts before the message goes to the dead-letter stream.
	MaxDeliver int
	// MaxAckPending bounds messages in flight.
	MaxAckPending int
	// Concurrency is how many messages are handled at once (default 1: in stream order).
	Concurrency int
	// Lane, when set, keeps order where it matters under Concurrency > 1: messages whose
	// subjects map to the same lane (a worker, say) are handled one at a time in stream order;
	// different lanes run concurrently.
	Lane func(subject string) string
	// DeliverNew starts a new consumer at new messages instead of the stream's start.
	DeliverNew bool
	// TrackHeld keeps the bookkeeping OldestHeld reports (a work queue whose age operators
	// watch); other consumers skip its cost on every message.
	TrackHeld bool
}

func (s *ConsumerSpec) defaults() {
	if s.Stream == "" {
		s.Stream = EventsStream
	}
	if s.AckWait == 0 {
		s.AckWait = 30 * time.Second
	}
	if len(s.BackOff) == 0 {
		s.BackOff = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second, 10 * time.Second, 30 * time.Second}
	}
	if s.MaxDeliver == 0 {
		s.MaxDeliver = 10
	}
	if s.MaxAckPending == 0 {
		s.MaxAckPending = 1000
	}
	if s.Concurrency == 0 {
		s.Concurrency = 1
	}
}

// Config returns the JetStream consumer config of the spec.
func (s ConsumerSpec) Config() jetstream.ConsumerConfig {
	s.defaults()
	cfg := jetstream.ConsumerConfig{
		Durable:       s.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.AckWait,
		MaxDeliver:    s.MaxDeliver,
		MaxAckPending: s.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if s.DeliverNew {
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	if len(s.FilterSubjects) == 1 {
		cfg.FilterSubject = s.FilterSubjects[0]
	} else {
		cfg.FilterSubjects = s.FilterSubjects
	}
	return cfg
}

// Consumer runs a handler over a durable pull consumer.
type Consumer struct {
	spec    ConsumerSpec
	js      jetstream.JetStream
	cons    jetstream.Consumer
	handler Handler
	log     *slog.Logger
	tracer  trace.Tracer
	lanes   lanes
	held    held
}

// held is the set of messages this process has received and not yet acknowledged, nak'd or
// terminated (in a handler, or waiting behind a busy lane), by stream sequence, with the
// time each was stored in the stream.
type held struct {
	mu   sync.Mutex
	msgs map[uint64]time.Time
}

func (h *held) add(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.msgs == nil {
		h.msgs = map[uint64]time.Time{}
	}
	h.msgs[meta.Sequence.Stream] = meta.Timestamp
}

func (h *held) remove(seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.msgs, seq)
}

// OldestHeld returns when the oldest message this process holds (received, not yet
// acknowledged, nak'd or terminated) was stored in the stream, and how many it holds. It
// needs no permission beyond consuming: a NATS user that may not read the stream's raw
// messages can still tell how old its work is. Other processes consuming the same durable
// hold their own messages, and a message nak'd for a later redelivery is held by nobody.
// Without ConsumerSpec.TrackHeld it reports nothing held.
func (c *Consumer) OldestHeld() (time.Time, int) {
	c.held.mu.Lock()
	defer c.held.mu.Unlock()
	var oldest time.Time
	for _, ts := range c.held.msgs {
		if oldest.IsZero() || ts.Before(oldest) {
			oldest = ts
		}
	}
	return oldest, len(c.held.msgs)
}

// NewConsumer creates or updates the durable consumer.
func NewConsumer(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, h Handler, log *slog.Logger) (*Consumer, error) {
	spec.defaults()
	if spec.Durable == "" {
		return nil, errors.New("natsx: consumer needs a durable name")
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, spec.Stream, spec.Config())
	if err != nil {
		return nil, fmt.Errorf("natsx: consumer %s on %s: %w", spec.Durable, spec.Stream, err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Consumer{spec: spec, js: js, cons: cons, handler: h, log: log.With("consumer", spec.Durable), tracer: telemetry.Tracer("tenure/natsx")}, nil
}

// Run handles messages until ctx ends, then waits for in-flight handlers.
func (c *Consumer) Run(ctx context.Context) error {
	it, err := c.cons.Messages(jetstream.PullMaxMessages(max(c.spec.Concurrency*2, 16)))
	if err != nil {
		return fmt.Errorf("natsx: consume %s: %w", c.spec.Durable, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	var wg sync.WaitGroup
	sem := make(chan struct{}, c.spec.Concurrency)
	defer wg.Wait()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			c.log.Warn("next message", "err", err)
			// Don't spin on a persistent error (e.g. the server is restarting).
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		if c.spec.TrackHeld {
			c.held.add(msg)
		}
		var lane string
		if c.spec.Lane != nil {
			lane = c.spec.Lane(msg.Subject())
			if c.lanes.enqueue(lane, msg) {
				continue // its lane is busy and will handle it next
			}
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			for m := msg; m != nil; m = c.lanes.next(lane) {
				c.handle(ctx, m)
				if c.spec.Lane == nil {
					return
				}
			}
		}()
	}
}

// lanes holds the messages waiting behind a busy lane.
type lanes struct {
	mu      sync.Mutex
	waiting map[string][]jetstream.Msg // a key is present while its lane is busy
}

// enqueue queues msg if its lane is busy and reports whether it did; otherwise it marks the
// lane busy and the caller handles msg.
func (l *lanes) enqueue(lane string, msg jetstream.Msg) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiting == nil {
		l.waiting = map[string][]jetstream.Msg{}
	}
	if q, busy := l.waiting[lane]; busy {
		l.waiting[lane] = append(q, msg)
		return true
	}
	l.waiting[lane] = nil
	return false
}

// next returns the lane's next message, or nil and frees the lane.
func (l *lanes) next(lane string) jetstream.Msg {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.waiting[lane]
	if len(q) == 0 {
		delete(l.waiting, lane)
		return nil
	}
	l.waiting[lane] = q[1:]
	return q[0]
}

func (c *Consumer) handle(ctx context.Context, msg jetstream.Msg) {
	meta, _ := msg.Metadata()
	if meta != nil && c.spec.TrackHeld {
		// Whatever the outcome below (ack, nak, term), this process no longer holds it.
		defer c.held.remove(meta.Sequence.Stream)
	}
	ctx = telemetry.ExtractNATS(context.WithoutCancel(ctx), msg.Headers())
	ctx, span := c.tracer.Start(ctx, "consume "+events.TypeOf(msg.Subject()),
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.destination.name", msg.Subject()), attribute.String("messaging.consumer.group.name", c.spec.Durable)))
	defer span.End()
	delivered := 1
	if meta != nil {
		delivered = int(meta.NumDelivered)
	}
	err := c.safeHandle(ctx, msg)
	if err == nil {
		// A plain ack, not a confirmed one: waiting for the server's answer held a handler
		// slot for a round trip to a busy server (in a mass termination, most of the
		// provisioner's event handlers waited there). An ack that is lost only means a
		// redelivery, which every handler already absorbs (inbox claims, ledger msg_id, SSF
		// jti), as it must after a crash between its commit and its ack.
		if err := msg.Ack(); err != nil {
			c.log.WarnContext(ctx, "ack", "subject", msg.Subject(), "err", err)
		}
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	if errors.Is(err, ErrPermanent) || delivered >= c.spec.MaxDeliver {
		c.log.ErrorContext(ctx, "dead-lettering message", "subject", msg.Subject(), "delivered", delivered, "err", err)
		if dlErr := c.deadLetter(ctx, msg, delivered, err); dlErr != nil {
			// Without a dead letter the message must stay in the stream: nak for later.
			c.log.ErrorContext(ctx, "dead-letter publish failed; will retry", "err", dlErr)
			msg.NakWithDelay(c.delay(delivered))
			return
		}
		msg.TermWithReason("dead-lettered: " + truncate(err.Error(), 200))
		return
	}
	c.log.WarnContext(ctx, "handler failed; will retry", "subject", msg.Subject(), "delivered", delivered, "err", err)
	msg.NakWithDelay(c.delay(delivered))
}

func (c *Consumer) safeHandle(ctx context.Context, msg jetstream.Msg) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	return c.handler(ctx, msg)
}

func (c *Consumer) delay(delivered int) time.Duration {
	i := min(delivered-1, len(c.spec.BackOff)-1)
	return c.spec.BackOff[max(i, 0)]
}

// Dead-letter headers, beside the original ones.
const (
	HeaderDLQSubject   = "Tenure-Dlq-Subject"
	HeaderDLQStreamSeq = "Tenure-Dlq-Stream-Seq"
	HeaderDLQConsumer  = "Tenure-Dlq-Consumer"
	HeaderDLQError     = "Tenure-Dlq-Error"
	HeaderDLQDelivered = "Tenure-Dlq-Delivered"
)

func (c *Consumer) deadLetter(ctx context.Context, msg jetstream.Msg, delivered int, cause error) error {
	h := nats.Header{}
	for k, v := range msg.Headers() {
		if k == jetstream.MsgIDHeader {
			continue
		}
		h[k] = v
	}
	var seq uint64
	if meta, err := msg.Metadata(); err == nil {
		seq = meta.Sequence.Stream
	}
	h.Set(HeaderDLQSubject, msg.Subject())
	h.Set(HeaderDLQStreamSeq, strconv.FormatUint(seq, 10))
	h.Set(HeaderDLQConsumer, c.spec.Durable)
	h.Set(HeaderDLQError, truncate(cause.Error(), 1000))
	h.Set(HeaderDLQDelivered, strconv.Itoa(delivered))
	// One dead letter per original message, however often we get here.
	h.Set(jetstream.MsgIDHeader, fmt.Sprintf("dlq:%s:%d", c.spec.Durable, seq))
	_, err := c.js.PublishMsg(ctx, &nats.Msg{Subject: DLQPrefix + "." + c.spec.Durable, Header: h, Data: msg.Data()})
	return err
}

// Redrive republishes a dead letter (by its sequence in the DLQ stream) to its original
// subject so the consumers see it again, then removes it from the dead-letter stream.
func Redrive(ctx context.Context, js jetstream.JetStream, dlqSeq uint64) error {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return err
	}
	raw, err := s.GetMsg(ctx, dlqSeq)
	if err != nil {
		return fmt.Errorf("natsx: dead letter %d: %w", dlqSeq, err)
	}
	subject := raw.Header.Get(HeaderDLQSubject)
	if subject == "" {
		return fmt.Errorf("natsx: dead letter %d has no %s header", dlqSeq, HeaderDLQSubject)
	}
	h := nats.Header{}
	for k, v := range raw.Header {
		switch k {
		case HeaderDLQSubject, HeaderDLQStreamSeq, HeaderDLQConsumer, HeaderDLQError, HeaderDLQDelivered, jetstream.MsgIDHeader:
			continue
		}
		h[k] = v
	}
	h.Set(jetstream.MsgIDHeader, fmt.Sprintf("redrive:%d:%d", dlqSeq, time.Now().UnixNano()))
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: raw.Data}); err != nil {
		return fmt.Errorf("natsx: redrive %d: %w", dlqSeq, err)
	}
	return s.DeleteMsg(ctx, dlqSeq)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
