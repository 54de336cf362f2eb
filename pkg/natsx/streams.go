package natsx

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names.
const (
	EventsStream = "TENURE_EVENTS"
	DLQStream    = "TENURE_DLQ"
	// WitnessStream keeps every checkpoint the ledger signs, outside PostgreSQL: nobody may
	// delete from it or purge it, only the ledger user publishes, security and auditor read.
	WitnessStream = "TENURE_WITNESS"
)

// WitnessSubject is the ledger's checkpoint witness subject. It lies outside tenure.> so the
// witness stream does not overlap the events stream.
const WitnessSubject = "witness.ledger.checkpoint"

// EventSubjects are the subject spaces of the events stream. The ledger records all of them.
var EventSubjects = []string{
	"tenure.hr.>",         // intake: joiner, mover, leaver, ...
	"tenure.access.>",     // approval: grant, revoke
	"tenure.provision.>",  // provisioner: work queue per connector
	"tenure.result.>",     // provisioner: connector outcomes
	"tenure.revocation.>", // provisioner: revocation stream for security teams
	"tenure.case.>",       // provisioner: leaver case lifecycle
	"tenure.alert.>",      // approval, provisioner: break-glass, overdue cases
	"tenure.reconcile.>",  // provisioner: reconciliation findings
	"tenure.ledger.>",     // ledger: checkpoints
}

// DLQPrefix prefixes dead-letter subjects: tenure.dlq.<durable>.
const DLQPrefix = "tenure.dlq"

// StreamOptions are the durability settings of tenure's streams. They are explicit because
// the defaults are not what a system of record wants.
type StreamOptions struct {
	// Replicas: 1 for dev, 3 in production (a 3-node cluster survives one node).
	Replicas int
	// MaxAge keeps events this long in the stream (the ledger keeps them for years).
	MaxAge time.Duration
	// Duplicates is the Nats-Msg-Id dedupe window. It is far shorter than HRIS retry
	// schedules, so consumers also dedupe in their Postgres inbox.
	Duplicates time.Duration
	// DLQMaxAge keeps dead letters long enough for an operator to act.
	DLQMaxAge time.Duration
}

// DefaultStreamOptions returns the settings used unless configured otherwise.
func DefaultStreamOptions() StreamOptions {
	return StreamOptions{Replicas: 1, MaxAge: 30 * 24 * time.Hour, Duplicates: 2 * time.Minute, DLQMaxAge: 90 * 24 * time.Hour}
}

// StreamConfigs returns the configs of the events and dead-letter streams.
func StreamConfigs(o StreamOptions) []jetstream.StreamConfig {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	return []jetstream.StreamConfig{
		{
			Name:        EventsStream,
			Description: "tenure events and commands",
			Subjects:    EventSubjects,
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			MaxAge:      o.MaxAge,
			Duplicates:  o.Duplicates,
			Discard:     jetstream.DiscardOld,
			// Atomic batches are stored with one fsync (see GroupPublisher).
			AllowAtomicPublish: true,
		},
		{
			Name:        DLQStream,
			Description: "messages that exhausted their deliveries; operators inspect and re-drive them",
			Subjects:    []string{DLQPrefix + ".>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			MaxAge:      o.DLQMaxAge,
			Duplicates:  o.Duplicates,
		},
		{
			Name:        WitnessStream,
			Description: "signed checkpoints of the audit ledger: a witness outside PostgreSQL (no delete, no purge, kept forever)",
			Subjects:    []string{WitnessSubject},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			Duplicates:  o.Duplicates,
			// Limits stay unset (keep everything): a witness that forgets is no witness.
			DenyDelete: true,
			DenyPurge:  true,
		},
	}
}

// EnsureStreams creates or updates the streams. It needs stream-management permissions
// (`tenure setup` or the embedded default).
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	for _, cfg := range StreamConfigs(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("natsx: ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// CheckStreams verifies that the streams exist, for services that may not create them.
func CheckStreams(ctx context.Context, js jetstream.JetStream) error {
	for _, name := range []string{EventsStream, DLQStream} {
		if _, err := js.Stream(ctx, name); err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return fmt.Errorf("natsx: stream %s does not exist: run `tenure setup` with a NATS admin user first", name)
			}
			return fmt.Errorf("natsx: stream %s: %w", name, err)
		}
	}
	return nil
}
