package telemetry

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
)

func TestNATSPropagationAndLogs(t *testing.T) {
	shutdown, err := Setup(context.Background(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	ctx, span := Tracer("t").Start(context.Background(), "webhook")
	defer span.End()

	h := nats.Header{}
	InjectNATS(ctx, h)
	if got := h.Get("traceparent"); !strings.Contains(got, span.SpanContext().TraceID().String()) {
		t.Fatalf("traceparent %q lacks trace %s (headers %v)", got, span.SpanContext().TraceID(), h)
	}
	remote := trace.SpanContextFromContext(ExtractNATS(context.Background(), h))
	if remote.TraceID() != span.SpanContext().TraceID() || !remote.IsRemote() {
		t.Fatalf("extracted %v", remote)
	}
	if got := trace.SpanContextFromContext(ExtractNATS(context.Background(), nil)); got.IsValid() {
		t.Fatal("nil headers produced a span context")
	}

	var buf bytes.Buffer
	log := slog.New(NewLogHandler(slog.NewTextHandler(&buf, nil))).With("svc", "x")
	log.InfoContext(ctx, "hello")
	if !strings.Contains(buf.String(), "trace_id="+span.SpanContext().TraceID().String()) || !strings.Contains(buf.String(), "svc=x") {
		t.Fatalf("log line %q lacks trace id or attrs", buf.String())
	}
}
