// Package natsx sets up tenure's NATS JetStream: the embedded server used by `tenure dev` and
// tests, the streams with explicit durability settings, and durable pull consumers with
// back-off, max deliveries and a dead-letter stream.
package natsx

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configures an in-process nats-server.
type EmbeddedOptions struct {
	// StoreDir holds JetStream's file storage.
	StoreDir string
	// Host and Port to listen on; Port -1 picks a free port. Default 127.0.0.1:-1.
	Host string
	Port int
	// SyncInterval is how often JetStream fsyncs. Zero keeps the server default (2 minutes),
	// under which an acknowledged write can be lost on power failure (Jepsen, NATS 2.12.1);
	// SyncAlways fsyncs every write.
	SyncInterval time.Duration
	SyncAlways   bool
	// ConfigFile, when set, is loaded first (authorization, accounts); the fields above
	// override its listen address and store directory.
	ConfigFile string
}

// StartEmbedded starts a nats-server with JetStream in this process and waits until it
// accepts connections. Call Shutdown and WaitForShutdown to stop it.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("natsx: EmbeddedOptions.StoreDir is required")
	}
	opts := &server.Options{}
	if o.ConfigFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(o.ConfigFile); err != nil {
			return nil, fmt.Errorf("natsx: load %s: %w", o.ConfigFile, err)
		}
	}
	opts.Host = o.Host
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	opts.Port = o.Port
	if opts.Port == 0 {
		opts.Port = -1
	}
	opts.JetStream = true
	opts.StoreDir = o.StoreDir
	opts.NoSigs = true
	opts.NoLog = true
	opts.ServerName = "tenure-embedded"
	// Keep the config file's fsync policy unless the caller set one.
	if o.SyncInterval != 0 || o.SyncAlways {
		opts.SyncInterval = o.SyncInterval
		opts.SyncAlways = o.SyncAlways
	}
	opts.HTTPPort = 0
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsx: new server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("natsx: embedded nats-server not ready after 10s")
	}
	return ns, nil
}
