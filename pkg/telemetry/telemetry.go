// Package telemetry sets up OpenTelemetry tracing and carries trace context across NATS
// headers, so one leaver is one trace from webhook to the last confirmation.
package telemetry

import (
	"context"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Setup installs a tracer provider and the W3C trace-context propagator. Spans are exported
// over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set; otherwise
// they are still created, so trace ids reach logs and event headers. The returned function
// flushes and stops the provider.
func Setup(ctx context.Context, service string) (func(context.Context) error, error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", service)))
	if err != nil {
		return nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// Tracer returns the named tracer of the global provider.
func Tracer(name string) trace.Tracer { return otel.Tracer(name) }

// natsCarrier adapts nats.Header to the propagation API. NATS header names are
// case-sensitive, so keys are kept exactly as the propagator writes them ("traceparent").
type natsCarrier nats.Header

func (c natsCarrier) Get(key string) string {
	if v := nats.Header(c).Values(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (c natsCarrier) Set(key, value string) { c[key] = []string{value} }
func (c natsCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// InjectNATS writes the context's trace context (traceparent, tracestate, baggage) into h.
func InjectNATS(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, natsCarrier(h))
}

// ExtractNATS returns ctx carrying the remote trace context found in h.
func ExtractNATS(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, natsCarrier(h))
}

// LogHandler wraps a slog.Handler so each record carries the trace and span id of its context.
type LogHandler struct{ slog.Handler }

// NewLogHandler returns h with trace ids added.
func NewLogHandler(h slog.Handler) *LogHandler { return &LogHandler{h} }

func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}
func (h *LogHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &LogHandler{h.Handler.WithAttrs(a)}
}
func (h *LogHandler) WithGroup(n string) slog.Handler { return &LogHandler{h.Handler.WithGroup(n)} }
