package events

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

func TestToken(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "w-1001", "w-1001"},
		{"dots", "a.b", "a%2Eb"},
		{"wildcards", "*>", "%2A%3E"},
		{"space", "a b", "a%20b"},
		{"percent", "50%", "50%25"},
		{"empty", "", "_"},
		{"unicode", "é", "%C3%A9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Token(tt.in); got != tt.want {
				t.Fatalf("Token(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
	if got := Subject("tenure.hr", "leaver", "x.y"); got != "tenure.hr.leaver.x%2Ey" {
		t.Fatalf("Subject = %q", got)
	}
}

func TestMsgHeadersRoundTrip(t *testing.T) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	defer span.End()

	at := time.Date(2026, 11, 23, 17, 0, 0, 0, time.UTC)
	payload := &eventsv1.WorkerEvent{EventId: "e1", Worker: &eventsv1.Worker{WorkerId: "w1"}}
	msg, err := Msg(ctx, Event{ID: "id-1", Subject: "tenure.hr.leaver.w1", Source: "tenure/intake", WorkerID: "w1", Time: at, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	checks := map[string]string{
		"Nats-Msg-Id": "id-1", HeaderID: "id-1", HeaderType: "tenure.hr.leaver", HeaderSource: "tenure/intake",
		HeaderSpecVersion: "1.0", HeaderSubject: "w1", HeaderTime: "2026-11-23T17:00:00Z",
		HeaderContentType: ContentType, HeaderDataSchema: "tenure.events.v1.WorkerEvent",
	}
	for k, want := range checks {
		if got := h.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	tp2 := h.Get(HeaderTraceParent)
	if tp2 == "" || tp2[3:35] != span.SpanContext().TraceID().String() {
		t.Errorf("traceparent %q does not carry trace %s", tp2, span.SpanContext().TraceID())
	}
	m := MetaOf(h)
	if m.ID != "id-1" || m.WorkerID != "w1" || !m.Time.Equal(at) || m.Type != "tenure.hr.leaver" {
		t.Errorf("MetaOf = %+v", m)
	}
	var back eventsv1.WorkerEvent
	if err := proto.Unmarshal(msg.Data, &back); err != nil || back.GetWorker().GetWorkerId() != "w1" {
		t.Fatalf("payload round trip: %v %v", err, &back)
	}
}

func TestMsgRejectsMissingID(t *testing.T) {
	if _, err := Msg(context.Background(), Event{Subject: "tenure.hr.joiner.w"}); err == nil {
		t.Fatal("want error for missing id")
	}
	_ = nats.Header{}
}
