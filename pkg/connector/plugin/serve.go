// Package plugin carries a tenure connector over gRPC (tenure.connector.v1.ConnectorService),
// so a connector can run in its own process: Serve exposes any connector.Connector, and
// NewClient gives the host a connector.Connector that calls one. Both ends map the SDK's
// error kinds (not found, permanent, retryable with a Retry-After hint) to gRPC status codes
// and back, so a remote connector's errors drive the host's retries exactly like a built-in
// one's.
//
// A connector author's main is a few lines:
//
//	lis, err := net.Listen("tcp", "127.0.0.1:7400")
//	...
//	return plugin.Serve(ctx, lis, myConnector, plugin.WithToken(token))
//
// Operators then point tenure at it with the "grpc" connector type (pkg/connectors/remote).
package plugin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tenure-dev/tenure/pkg/connector"
	connectorv1 "github.com/tenure-dev/tenure/proto/tenure/connector/v1"
)

// Option configures Serve.
type Option func(*options)

type options struct {
	tokenSum  [sha256.Size]byte
	hasToken  bool
	tls       *tls.Config
	plaintext bool
	log       *slog.Logger
	grace     time.Duration
}

// WithToken sets the bearer token every call must carry ("authorization: Bearer <token>").
// It is required.
func WithToken(token string) Option {
	return func(o *options) {
		// Keeping only the hash lets the comparison take the same time whatever the length.
		o.tokenSum = sha256.Sum256([]byte(token))
		o.hasToken = token != ""
	}
}

// WithTLS serves TLS with cfg. Set cfg.ClientAuth to tls.RequireAndVerifyClientCert and
// cfg.ClientCAs for mutual TLS.
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithPlaintext allows serving without TLS on a listener that is not loopback, for a
// connector behind a proxy or service mesh that terminates TLS in front of it. Without it,
// Serve refuses plaintext anywhere but loopback and unix sockets, since the bearer token
// travels in every call.
func WithPlaintext() Option { return func(o *options) { o.plaintext = true } }

// WithLogger sets where rejected calls and recovered panics are logged; the default is
// slog.Default(). Tokens are never logged.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithGracePeriod bounds how long Serve waits for calls in flight after ctx ends before it
// cuts them off; the default is 10 seconds.
func WithGracePeriod(d time.Duration) Option { return func(o *options) { o.grace = d } }

// Serve serves c as ConnectorService on lis until ctx ends, then lets calls in flight finish
// (see WithGracePeriod) and returns nil. It returns an error at once when the options are
// unsafe (no token, plaintext on a non-loopback listener) and when lis fails. Serve does not
// close c; the caller does, after Serve returns.
func Serve(ctx context.Context, lis net.Listener, c connector.Connector, opts ...Option) error {
	o := options{log: slog.Default(), grace: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if c == nil {
		return errors.New("plugin: Serve needs a connector")
	}
	if !o.hasToken {
		return errors.New("plugin: a bearer token is required (WithToken): without one anyone who reaches the port can change accounts")
	}
	if o.tls == nil && !o.plaintext && !isLocal(lis.Addr()) {
		return fmt.Errorf("plugin: %s is not a loopback address: serve TLS (WithTLS), or WithPlaintext behind a proxy that terminates TLS", lis.Addr())
	}
	var sopts []grpc.ServerOption
	if o.tls != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(o.tls)))
	}
	sopts = append(sopts, grpc.ChainUnaryInterceptor(o.recoverPanics, o.authenticate, continueTrace))
	srv := grpc.NewServer(sopts...)
	connectorv1.RegisterConnectorServiceServer(srv, &service{c: c})

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return fmt.Errorf("plugin: serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	// A disable cut off halfway is retried by the host, but letting it finish saves a round.
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(o.grace):
		srv.Stop()
		<-stopped
	}
	<-served
	return nil
}

// isLocal reports whether addr can only be reached from this machine.
func isLocal(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

func (o *options) authenticate(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if reason := o.checkToken(ctx); reason != "" {
		var from string
		if p, ok := peer.FromContext(ctx); ok {
			from = p.Addr.String()
		}
		o.log.Warn("connector call rejected", "method", info.FullMethod, "peer", from, "reason", reason)
		return nil, status.Error(codes.Unauthenticated, reason)
	}
	return handler(ctx, req)
}

// checkToken returns why the call's bearer token is not accepted, or "".
func (o *options) checkToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "missing bearer token"
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "authorization is not a bearer token"
	}
	sum := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(sum[:], o.tokenSum[:]) != 1 {
		return "wrong bearer token"
	}
	return ""
}

// recoverPanics keeps one bad call from taking the connector process, and every other
// target's work queued behind it, down. INTERNAL is retryable: the host tries again.
func (o *options) recoverPanics(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			o.log.Error("connector call panicked", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "connector panicked: %v", r)
		}
	}()
	return handler(ctx, req)
}
