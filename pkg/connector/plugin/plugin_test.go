package plugin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	connectorv1 "github.com/tenure-dev/tenure/proto/tenure/connector/v1"
)

const testToken = "s3cret-connector-token"

// syncBuffer collects a server's log lines while the server writes them.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serve runs Serve for c on a loopback port until the test ends and returns the address.
func serve(t *testing.T, c connector.Connector, opts ...Option) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, c, append([]Option{WithToken(testToken)}, opts...)...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// dial connects to addr sending token (none when empty).
func dial(t *testing.T, addr, token string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			return invoker(ctx, method, req, reply, cc, opts...)
		}))
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// remote serves c and returns a client for it, closed when the test ends.
func remote(t *testing.T, c connector.Connector, opts ...ClientOption) connector.Connector {
	t.Helper()
	addr := serve(t, c)
	rc, err := NewClient(t.Context(), dial(t, addr, testToken), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { connector.Close(rc) })
	return rc
}

func TestConformanceOverGRPC(t *testing.T) {
	var m *connectortest.Memory // the target behind the current subtest's client
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			m = connectortest.NewMemory("read", "write")
			m.PageSize = 2
			addr := serve(t, m)
			c, err := NewClient(t.Context(), dial(t, addr, testToken))
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		Features: connectortest.Features{
			Create: true, Disable: true, Enable: true, Delete: true,
			Entitlements: true, Sessions: true, List: true, Credentials: true, Profile: true,
		},
		Entitlements: []string{"read", "write"},
		// Revoked over the wire, checked in the target behind the server.
		Credentials: &connectortest.CredentialProbe{
			Give: func(t *testing.T, _ connector.Connector, acc connector.Account) {
				if err := m.SetCredential(connector.AccountRef{ID: acc.ID}, "s3cret"); err != nil {
					t.Fatal(err)
				}
			},
			Works: func(t *testing.T, _ connector.Connector, acc connector.Account) bool {
				return m.Authenticate(connector.AccountRef{ID: acc.ID}, "s3cret")
			},
		},
	})
}

// readOnly hides every capability but GetAccount.
type readOnly struct{ connector.Connector }

// A server without capabilities gives a client without capabilities: the suite's
// Capabilities subtest fails if the client claims any.
func TestReadOnlyConformanceOverGRPC(t *testing.T) {
	connectortest.Run(t, connectortest.Harness{
		New: func(t *testing.T) connector.Connector {
			addr := serve(t, readOnly{connectortest.NewMemory()})
			c, err := NewClient(t.Context(), dial(t, addr, testToken))
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
	})
}

func TestComposeImplementsExactlyTheSet(t *testing.T) {
	for set := capSet(0); set <= allCaps; set++ {
		c := compose(&client{}, set)
		if got := capsOf(c); got != set {
			t.Errorf("compose(%08b) implements %08b (%v)", set, got, connector.Capabilities(c))
		}
		if _, ok := c.(io.Closer); !ok {
			t.Errorf("compose(%08b) is not an io.Closer", set)
		}
	}
}

func TestCapabilityNamesMatchTheSDK(t *testing.T) {
	all := connector.Capabilities(connectortest.NewMemory())
	if got := append([]string{"get"}, CapabilityNames()...); !slices.Equal(got, all) {
		t.Fatalf("plugin knows %v, the SDK has %v: add the new capability to wire.go and connector.proto, then go generate", got, all)
	}
}

func TestErrorsCrossTheWire(t *testing.T) {
	errTarget := errors.New("target says no")
	tests := []struct {
		name        string
		inject      error
		kind        connector.ErrorKind
		retryAfter  time.Duration
		notFound    bool
		unsupported bool
		pending     bool
	}{
		{name: "not found", inject: connector.NotFound(errTarget), kind: connector.KindNotFound, notFound: true},
		{name: "sentinel not found", inject: connector.ErrNotFound, kind: connector.KindNotFound, notFound: true},
		{name: "permanent", inject: connector.Permanent(errTarget), kind: connector.KindPermanent},
		{name: "retryable", inject: connector.Retryable(errTarget), kind: connector.KindRetryable},
		{name: "retry after", inject: connector.RetryableAfter(errTarget, 7*time.Second), kind: connector.KindRetryable, retryAfter: 7 * time.Second},
		{name: "unclassified", inject: errTarget, kind: connector.KindRetryable},
		{name: "unsupported", inject: connector.ErrUnsupported, kind: connector.KindPermanent, unsupported: true},
		{name: "pending", inject: connector.Pending("T-17"), kind: connector.KindRetryable, pending: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := connectortest.NewMemory()
			m.Inject = func(op string, _ connector.AccountRef) error {
				if op == connector.CapDisable {
					return tt.inject
				}
				return nil
			}
			c := remote(t, m)
			err := c.(connector.Disabler).DisableAccount(t.Context(), connector.AccountRef{Username: "ada"})
			if err == nil {
				t.Fatal("DisableAccount succeeded, want the injected error")
			}
			if k := connector.KindOf(err); k != tt.kind {
				t.Errorf("KindOf(%q) = %v, want %v", err, k, tt.kind)
			}
			if d := connector.RetryAfterOf(err); d != tt.retryAfter {
				t.Errorf("RetryAfterOf(%q) = %v, want %v", err, d, tt.retryAfter)
			}
			if got := errors.Is(err, connector.ErrNotFound); got != tt.notFound {
				t.Errorf("errors.Is(%q, ErrNotFound) = %v, want %v", err, got, tt.notFound)
			}
			if got := errors.Is(err, connector.ErrUnsupported); got != tt.unsupported {
				t.Errorf("errors.Is(%q, ErrUnsupported) = %v, want %v", err, got, tt.unsupported)
			}
			if got := errors.Is(err, connector.ErrPending); got != tt.pending {
				t.Errorf("errors.Is(%q, ErrPending) = %v, want %v", err, got, tt.pending)
			}
			// The operator sees the target's words and which call failed where.
			for _, want := range []string{tt.inject.Error(), "DisableAccount", "127.0.0.1"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// A client told the server can disable, when it cannot, gets a permanent "unsupported" from
// the server instead of a retry loop.
func TestDeclaredCapabilityTheServerLacks(t *testing.T) {
	c := remote(t, readOnly{connectortest.NewMemory()}, WithCapabilities("get", connector.CapDisable))
	if got := connector.Capabilities(c); !slices.Equal(got, []string{"get", connector.CapDisable}) {
		t.Fatalf("Capabilities = %v, want exactly the declared ones", got)
	}
	err := c.(connector.Disabler).DisableAccount(t.Context(), connector.AccountRef{Username: "ada"})
	if !errors.Is(err, connector.ErrUnsupported) || connector.KindOf(err) != connector.KindPermanent {
		t.Fatalf("DisableAccount = %v (%v), want a permanent ErrUnsupported", err, connector.KindOf(err))
	}
	if !strings.Contains(err.Error(), "no disable capability") {
		t.Errorf("error %q does not say which capability is missing", err)
	}
}

func TestWithCapabilitiesRejectsUnknownNames(t *testing.T) {
	cc := dial(t, "127.0.0.1:1", testToken)
	defer cc.Close()
	_, err := NewClient(t.Context(), cc, WithCapabilities("disable", "teleport"))
	if err == nil || !strings.Contains(err.Error(), `unknown capability "teleport"`) || !strings.Contains(err.Error(), "disable, enable") {
		t.Fatalf("NewClient = %v, want an error naming the unknown capability and the known ones", err)
	}
}

func TestBearerToken(t *testing.T) {
	var logs syncBuffer
	addr := serve(t, connectortest.NewMemory(), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	const wrong = "not-the-token-0123456789"
	for _, tt := range []struct {
		name, token, reason string
	}{
		{"missing", "", "missing bearer token"},
		{"wrong", wrong, "wrong bearer token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cc := dial(t, addr, tt.token)
			defer cc.Close()
			rpc := connectorv1.NewConnectorServiceClient(cc)
			_, err := rpc.Describe(t.Context(), &connectorv1.DescribeRequest{})
			err = fromStatus(t.Context(), addr, "Describe", err)
			if connector.KindOf(err) != connector.KindPermanent || !strings.Contains(err.Error(), "Unauthenticated") || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("Describe with %s token = %v (%v), want a permanent Unauthenticated error saying %q", tt.name, err, connector.KindOf(err), tt.reason)
			}
		})
	}
	if !strings.Contains(logs.String(), "wrong bearer token") {
		t.Errorf("rejected call not logged; logs:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), wrong) || strings.Contains(logs.String(), testToken) {
		t.Errorf("a token reached the log:\n%s", logs.String())
	}
	// The right token works, and a scheme in another case is still a bearer token.
	cc := dial(t, addr, "")
	defer cc.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "bearer "+testToken)
	if _, err := connectorv1.NewConnectorServiceClient(cc).Describe(ctx, &connectorv1.DescribeRequest{}); err != nil {
		t.Fatalf("Describe with the token: %v", err)
	}
}

func TestServeRefusesUnsafeSetups(t *testing.T) {
	m := connectortest.NewMemory()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if err := Serve(t.Context(), lis, m); err == nil || !strings.Contains(err.Error(), "bearer token is required") {
		t.Errorf("Serve without a token = %v, want a refusal naming the token", err)
	}
	if err := Serve(t.Context(), lis, m, WithToken("")); err == nil || !strings.Contains(err.Error(), "bearer token is required") {
		t.Errorf("Serve with an empty token = %v, want a refusal naming the token", err)
	}
	wide, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer wide.Close()
	if err := Serve(t.Context(), wide, m, WithToken(testToken)); err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Errorf("plaintext Serve on %s = %v, want a refusal", wide.Addr(), err)
	}
}

func TestServeReturnsWhenContextEnds(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, connectortest.NewMemory(), WithToken(testToken)) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

// A panicking connector call is one retryable failure, not a dead process.
func TestPanicIsRetryable(t *testing.T) {
	m := connectortest.NewMemory()
	m.Inject = func(op string, ref connector.AccountRef) error {
		if ref.Username == "boom" {
			panic("nil map somewhere")
		}
		return nil
	}
	var logs syncBuffer
	addr := serve(t, m, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	c, err := NewClient(t.Context(), dial(t, addr, testToken))
	if err != nil {
		t.Fatal(err)
	}
	defer connector.Close(c)
	_, err = c.GetAccount(t.Context(), connector.AccountRef{Username: "boom"})
	if err == nil || connector.KindOf(err) != connector.KindRetryable || !strings.Contains(err.Error(), "nil map somewhere") {
		t.Fatalf("GetAccount of a panicking call = %v, want a retryable error with the panic", err)
	}
	if _, err := c.GetAccount(t.Context(), connector.AccountRef{Username: "ada"}); !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("GetAccount after the panic = %v, want ErrNotFound from a live server", err)
	}
	if !strings.Contains(logs.String(), "connector call panicked") {
		t.Errorf("panic not logged; logs:\n%s", logs.String())
	}
}

// The caller's deadline ends the call as retryable, and the error says it was the deadline.
func TestCallerDeadline(t *testing.T) {
	m := connectortest.NewMemory()
	release := make(chan struct{})
	m.Inject = func(string, connector.AccountRef) error { <-release; return nil }
	c := remote(t, m)
	defer close(release)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := c.GetAccount(ctx, connector.AccountRef{Username: "slow"})
	// Either side's timer may fire first: the server's (it got the deadline on the wire) or
	// the caller's. Both are retryable and say so.
	if connector.KindOf(err) != connector.KindRetryable || !strings.Contains(strings.ToLower(err.Error()), "deadline") {
		t.Fatalf("GetAccount past the deadline = %v, want a retryable error naming the deadline", err)
	}
}

// traceRecorder records the trace id each GetAccount runs in.
type traceRecorder struct {
	*connectortest.Memory
	mu  sync.Mutex
	ids []trace.TraceID
}

func (r *traceRecorder) GetAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	r.mu.Lock()
	r.ids = append(r.ids, trace.SpanContextFromContext(ctx).TraceID())
	r.mu.Unlock()
	return r.Memory.GetAccount(ctx, ref)
}

// The host's trace continues in the connector process.
func TestTraceContextCrossesTheWire(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	rec := &traceRecorder{Memory: connectortest.NewMemory()}
	c := remote(t, rec)
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(t.Context(), sc)
	c.GetAccount(ctx, connector.AccountRef{Username: "ada"})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.ids) != 1 || rec.ids[0] != sc.TraceID() {
		t.Fatalf("the connector ran in traces %v, want [%s]", rec.ids, sc.TraceID())
	}
}
