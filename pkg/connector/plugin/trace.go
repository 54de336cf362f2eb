package plugin

import (
	"context"

	"go.opentelemetry.io/otel"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// The host's trace context (W3C traceparent, through the global propagator that
// telemetry.Setup installs) travels in the call's metadata, so a connector process that traces
// continues the host's trace: one leaver stays one trace across the process boundary.

// metadataCarrier lets OpenTelemetry read and write gRPC metadata.
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c metadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// tracingConn injects the trace context into every call made through it.
type tracingConn struct{ *grpc.ClientConn }

func (c tracingConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	otel.GetTextMapPropagator().Inject(ctx, metadataCarrier(md))
	return c.ClientConn.Invoke(metadata.NewOutgoingContext(ctx, md), method, args, reply, opts...)
}

// continueTrace makes the caller's trace the parent of whatever the connector traces.
func continueTrace(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return handler(otel.GetTextMapPropagator().Extract(ctx, metadataCarrier(md)), req)
}
