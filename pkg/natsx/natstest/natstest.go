// Package natstest starts a real, embedded nats-server with JetStream for a test.
package natstest

import (
	"context"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

// Server is a running embedded server with a connection and tenure's streams.
type Server struct {
	Server *server.Server
	URL    string
	Conn   *nats.Conn
	JS     jetstream.JetStream
}

// Start starts a server with its store in a temp dir, creates tenure's streams and stops
// everything when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(context.Background(), js, natsx.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	return &Server{Server: ns, URL: ns.ClientURL(), Conn: nc, JS: js}
}
