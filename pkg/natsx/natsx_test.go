package natsx_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

func TestStreamConfigIsExplicit(t *testing.T) {
	s := natstest.Start(t)
	ctx := context.Background()
	st, err := s.JS.Stream(ctx, natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if cfg.Storage != jetstream.FileStorage || cfg.Replicas != 1 || cfg.Duplicates != 2*time.Minute || cfg.MaxAge != 30*24*time.Hour {
		t.Fatalf("events stream config: storage=%v replicas=%d dup=%v maxage=%v", cfg.Storage, cfg.Replicas, cfg.Duplicates, cfg.MaxAge)
	}
	if _, err := s.JS.Stream(ctx, natsx.DLQStream); err != nil {
		t.Fatal(err)
	}
	if err := natsx.CheckStreams(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	// A second EnsureStreams is harmless.
	if err := natsx.EnsureStreams(ctx, s.JS, natsx.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
}

func TestCheckStreamsNamesTheFix(t *testing.T) {
	s := natstest.Start(t)
	if err := s.JS.DeleteStream(context.Background(), natsx.EventsStream); err != nil {
		t.Fatal(err)
	}
	err := natsx.CheckStreams(context.Background(), s.JS)
	if err == nil || !strings.Contains(err.Error(), "tenure setup") {
		t.Fatalf("want a message naming `tenure setup`, got %v", err)
	}
}

func TestPublishDedupeWithinWindow(t *testing.T) {
	s := natstest.Start(t)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		msg := &nats.Msg{Subject: "tenure.hr.joiner.w1", Header: nats.Header{}, Data: []byte("x")}
		msg.Header.Set(jetstream.MsgIDHeader, "same-id")
		ack, err := s.JS.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		if (i > 0) != ack.Duplicate {
			t.Fatalf("publish %d: duplicate=%v", i, ack.Duplicate)
		}
	}
}

func publish(t *testing.T, js jetstream.JetStream, ctx context.Context, subject, id string) {
	t.Helper()
	msg, err := events.Msg(ctx, events.Event{ID: id, Subject: subject, Source: "test", Payload: &eventsv1.WorkerEvent{EventId: id}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
}

func runConsumer(t *testing.T, js jetstream.JetStream, spec natsx.ConsumerSpec, h natsx.Handler) {
	t.Helper()
	c, err := natsx.NewConsumer(context.Background(), js, spec, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestRetryWithBackOffThenSuccess(t *testing.T) {
	s := natstest.Start(t)
	var mu sync.Mutex
	var times []time.Time
	done := make(chan struct{})
	runConsumer(t, s.JS, natsx.ConsumerSpec{
		Durable: "retry", FilterSubjects: []string{"tenure.hr.>"},
		BackOff: []time.Duration{50 * time.Millisecond, 200 * time.Millisecond}, MaxDeliver: 5,
	}, func(ctx context.Context, msg jetstream.Msg) error {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if len(times) < 3 {
			return errors.New("target busy")
		}
		close(done)
		return nil
	})
	publish(t, s.JS, context.Background(), "tenure.hr.joiner.w1", "e1")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("message not handled after retries")
	}
	mu.Lock()
	defer mu.Unlock()
	if d := times[1].Sub(times[0]); d < 40*time.Millisecond {
		t.Errorf("first redelivery after %v, want ≥ 50ms back-off", d)
	}
	if d := times[2].Sub(times[1]); d < 180*time.Millisecond {
		t.Errorf("second redelivery after %v, want ≥ 200ms back-off", d)
	}
	time.Sleep(300 * time.Millisecond)
	if len(times) != 3 {
		t.Fatalf("handled %d times, want 3 (acked after success)", len(times))
	}
}

func TestDeadLetterAfterMaxDeliverAndRedrive(t *testing.T) {
	s := natstest.Start(t)
	ctx := context.Background()
	var calls atomic.Int32
	var healed atomic.Bool
	handled := make(chan struct{}, 1)
	runConsumer(t, s.JS, natsx.ConsumerSpec{
		Durable: "dl", FilterSubjects: []string{"tenure.access.>"},
		BackOff: []time.Duration{10 * time.Millisecond}, MaxDeliver: 3,
	}, func(ctx context.Context, msg jetstream.Msg) error {
		calls.Add(1)
		if !healed.Load() {
			return errors.New("connector misconfigured")
		}
		handled <- struct{}{}
		return nil
	})
	publish(t, s.JS, ctx, "tenure.access.grant.w9", "g1")

	dlq, err := s.JS.Stream(ctx, natsx.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	var raw *jetstream.RawStreamMsg
	deadline := time.Now().Add(10 * time.Second)
	for raw == nil && time.Now().Before(deadline) {
		raw, _ = dlq.GetLastMsgForSubject(ctx, "tenure.dlq.dl")
		time.Sleep(20 * time.Millisecond)
	}
	if raw == nil {
		t.Fatal("no dead letter")
	}
	if got := calls.Load(); got != 3 {
		t.Fatalf("handler called %d times before dead-lettering, want MaxDeliver=3", got)
	}
	checks := map[string]string{natsx.HeaderDLQSubject: "tenure.access.grant.w9", natsx.HeaderDLQConsumer: "dl", natsx.HeaderDLQError: "connector misconfigured", natsx.HeaderDLQDelivered: "3", events.HeaderID: "g1"}
	for k, want := range checks {
		if got := raw.Header.Get(k); got != want {
			t.Errorf("dead letter header %s = %q, want %q", k, got, want)
		}
	}
	healed.Store(true)
	if err := natsx.Redrive(ctx, s.JS, raw.Sequence); err != nil {
		t.Fatal(err)
	}
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("redriven message not handled")
	}
	if _, err := dlq.GetMsg(ctx, raw.Sequence); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("dead letter still present after redrive: %v", err)
	}
}

func TestPermanentErrorDeadLettersAtOnce(t *testing.T) {
	s := natstest.Start(t)
	ctx := context.Background()
	var calls atomic.Int32
	runConsumer(t, s.JS, natsx.ConsumerSpec{Durable: "perm", FilterSubjects: []string{"tenure.result.>"}, MaxDeliver: 5},
		func(ctx context.Context, msg jetstream.Msg) error {
			calls.Add(1)
			return natsx.Permanent(errors.New("malformed payload"))
		})
	publish(t, s.JS, ctx, "tenure.result.demo.verified", "r1")
	dlq, _ := s.JS.Stream(ctx, natsx.DLQStream)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if raw, err := dlq.GetLastMsgForSubject(ctx, "tenure.dlq.perm"); err == nil {
			if calls.Load() != 1 || raw.Header.Get(natsx.HeaderDLQDelivered) != "1" {
				t.Fatalf("calls=%d delivered=%s, want 1", calls.Load(), raw.Header.Get(natsx.HeaderDLQDelivered))
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no dead letter for a permanent error")
}

func TestTraceContextCrossesNATS(t *testing.T) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	tp := sdktrace.NewTracerProvider()
	otel.SetTracerProvider(tp)
	s := natstest.Start(t)
	got := make(chan trace.SpanContext, 1)
	runConsumer(t, s.JS, natsx.ConsumerSpec{Durable: "trace", FilterSubjects: []string{"tenure.case.>"}},
		func(ctx context.Context, msg jetstream.Msg) error {
			got <- trace.SpanContextFromContext(ctx)
			return nil
		})
	ctx, span := tp.Tracer("test").Start(context.Background(), "webhook")
	publish(t, s.JS, ctx, "tenure.case.opened.w1", "c1")
	span.End()
	select {
	case sc := <-got:
		if sc.TraceID() != span.SpanContext().TraceID() {
			t.Fatalf("consumer trace %s, want %s", sc.TraceID(), span.SpanContext().TraceID())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not consumed")
	}
}

// With lanes, a worker's messages are handled one at a time in stream order while other
// workers' messages run alongside.
func TestLanesKeepOrderPerKeyAndRunKeysConcurrently(t *testing.T) {
	s := natstest.Start(t)
	const workers, each = 8, 10
	var mu sync.Mutex
	seen := map[string][]uint64{} // stream sequences, in the order handled
	active := map[string]int{}
	maxParallel, parallel := 0, 0
	done := make(chan struct{})
	total := 0
	runConsumer(t, s.JS, natsx.ConsumerSpec{
		Durable: "lanes", FilterSubjects: []string{"tenure.hr.>"}, Concurrency: 4,
		Lane: events.WorkerTokenOf,
	}, func(ctx context.Context, msg jetstream.Msg) error {
		w := events.WorkerTokenOf(msg.Subject())
		mu.Lock()
		active[w]++
		parallel++
		if active[w] > 1 {
			t.Errorf("worker %s handled twice at once", w)
		}
		maxParallel = max(maxParallel, parallel)
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		active[w]--
		parallel--
		meta, _ := msg.Metadata()
		seen[w] = append(seen[w], meta.Sequence.Stream)
		total++
		if total == workers*each {
			close(done)
		}
		mu.Unlock()
		return nil
	})
	// Each worker's messages back to back: without lanes they would overlap.
	for w := range workers {
		for i := range each {
			publish(t, s.JS, context.Background(), fmt.Sprintf("tenure.hr.mover.w%d", w), fmt.Sprintf("w%d-%02d", w, i))
		}
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("handled %d of %d", total, workers*each)
	}
	mu.Lock()
	defer mu.Unlock()
	for w, got := range seen {
		if len(got) != each || !slices.IsSorted(got) {
			t.Fatalf("worker %s handled %v, want %d in stream order", w, got, each)
		}
	}
	if maxParallel < 2 {
		t.Fatalf("at most %d handled at once, want concurrency across workers", maxParallel)
	}
}

// OldestHeld reports the stream time of the oldest message a handler (or a busy lane) holds,
// and forgets each message once it is acknowledged.
func TestOldestHeldTracksMessagesInHand(t *testing.T) {
	s := natstest.Start(t)
	release := make(chan struct{})
	started := make(chan string, 4)
	c, err := natsx.NewConsumer(context.Background(), s.JS, natsx.ConsumerSpec{
		Durable: "held", FilterSubjects: []string{"tenure.hr.>"}, Concurrency: 4, Lane: events.WorkerTokenOf, TrackHeld: true,
	}, func(ctx context.Context, msg jetstream.Msg) error {
		started <- msg.Subject()
		<-release
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, n := c.OldestHeld(); n != 0 {
		t.Fatalf("holds %d before any message", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	before := time.Now()
	publish(t, s.JS, context.Background(), "tenure.hr.joiner.w1", "h1")
	time.Sleep(20 * time.Millisecond)
	publish(t, s.JS, context.Background(), "tenure.hr.mover.w1", "h2") // waits behind w1's lane
	publish(t, s.JS, context.Background(), "tenure.hr.joiner.w2", "h3")
	for range 2 {
		<-started
	}
	eventually(t, func() bool { _, n := c.OldestHeld(); return n == 3 })
	oldest, _ := c.OldestHeld()
	st, err := s.JS.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !oldest.Equal(first.Time) || oldest.Before(before.Add(-time.Second)) {
		t.Fatalf("oldest held %v, want the first message's stream time %v", oldest, first.Time)
	}
	close(release)
	eventually(t, func() bool { _, n := c.OldestHeld(); return n == 0 })
}

func eventually(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
