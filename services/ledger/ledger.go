// Package ledger is tenure's audit ledger: it records every event on the events stream
// (tenure.>) exactly once, as a leaf of one append-only RFC 6962 Merkle tree in PostgreSQL,
// signs checkpoints of the tree that witnesses outside PostgreSQL keep, and answers
// auditors over gRPC (LedgerService: Query, Verify).
//
// Any number of replicas may run: they share the durable consumer "ledger", and each batch
// is appended while the single head row is locked, so the tree's leaves stay one gapless
// sequence.
// An event is identified by its CloudEvents id, so a redelivery or a re-driven dead letter
// is never recorded twice.
package ledger

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/transparency-dev/merkle/compact"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/telemetry"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the ledger's PostgreSQL schema.
const Schema = "ledger"

// Durable is the name of the ledger's consumer on the events stream.
const Durable = "ledger"

// Config tunes the ledger. The zero value is usable.
type Config struct {
	// BatchSize is the most events appended in one transaction (default 500).
	BatchSize int
	// BatchWindow is how long the appender waits for more events after the first one of a
	// batch (default 5ms): the latency an idle ledger adds, traded for fewer transactions.
	BatchWindow time.Duration
	// AckWait is how long a delivered event may stay unacknowledged before JetStream
	// redelivers it (default 60s). A batch is committed and acked well within it.
	AckWait time.Duration
	// MaxAckPending bounds the events in flight across all replicas (default 4096).
	MaxAckPending int
	// VerifyPageSize is how many entries one Verify worker reads per COPY (default 10,000).
	VerifyPageSize int
	// VerifyWorkers is how many connections Verify reads the entries with in parallel, in one
	// snapshot (default 3: on 2 cores, 3 beat 2 by a quarter, 4 add little). Each checks its
	// pages' entries; the links between pages are checked when the pages are joined.
	VerifyWorkers int

	// SigningKey signs checkpoints, evidence manifests and archives. When nil, the key is
	// read from KeyFile (created there when missing); without either, an ephemeral key is
	// generated at start, which suits tests only: checkpoints signed by a previous process
	// then fail Verify as signed by an unknown key.
	SigningKey ed25519.PrivateKey
	KeyFile    string
	// TrustedKeys are older public keys (after a rotation) whose checkpoints Verify accepts.
	TrustedKeys []ed25519.PublicKey
	// CheckpointEvery: a checkpoint is signed once this many entries followed the last one
	// (default 1000). CheckpointInterval: and at least this often while entries arrive
	// (default 10s).
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// CheckpointGrace: Verify reports entries recorded longer ago than this and covered by
	// no checkpoint, which is what deleting the checkpoints looks like (default
	// 2×CheckpointInterval + 1m).
	CheckpointGrace time.Duration
	// Retention is how long entries are kept (default 6 years, 45 CFR 164.316(b)(2)); the
	// default cutoff of Archive.
	Retention time.Duration
	// WriterRole is the PostgreSQL role Deps.Pool connects as, when Deps.AdminPool (the
	// schema owner) is given: New grants it only what the ledger needs at run time
	// (SELECT and INSERT on entries and checkpoints, SELECT and UPDATE on the head, the
	// outbox), so it can neither alter nor drop the triggers nor change entries.
	WriterRole string
	// Origin names the log in its checkpoints (the first line of each tlog-checkpoint note,
	// and the note key's name). Default DefaultOrigin; change it only to start a new log.
	Origin string
	// WitnessDir, when set, also keeps every signed checkpoint as a file in this directory
	// (mount it append-only, or sync it to object storage with object lock). The JetStream
	// witness (natsx.WitnessStream) is used whenever Deps.JS is set.
	WitnessDir string
	// Witnesses are further witnesses (tests, or another store).
	Witnesses []Witness
	// WatchPoll is how often a WatchRevocations stream looks for entries that another ledger
	// replica appended (default 1s); appends by this process wake it at once.
	WatchPoll time.Duration
}

// DefaultRetention is six years (45 CFR 164.316(b)(2)(i)).
const DefaultRetention = 6 * 365 * 24 * time.Hour

func (c *Config) defaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.BatchWindow <= 0 {
		c.BatchWindow = 5 * time.Millisecond
	}
	if c.AckWait <= 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 4096
	}
	if c.MaxAckPending < 2*c.BatchSize {
		c.MaxAckPending = 2 * c.BatchSize
	}
	if c.VerifyPageSize <= 0 {
		c.VerifyPageSize = 10000
	}
	if c.VerifyWorkers <= 0 {
		c.VerifyWorkers = 3
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 1000
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 10 * time.Second
	}
	if c.CheckpointGrace <= 0 {
		c.CheckpointGrace = 2*c.CheckpointInterval + time.Minute
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.Origin == "" {
		c.Origin = DefaultOrigin
	}
	if c.WatchPoll <= 0 {
		c.WatchPoll = time.Second
	}
}

// Deps are the ledger's connections.
type Deps struct {
	// Pool uses the ledger schema as its search_path: pgstore.Connect(ctx, url, "ledger").
	Pool *pgxpool.Pool
	// JS reaches the events stream. It may be nil for an instance that only answers
	// queries (Run then records nothing).
	JS  jetstream.JetStream
	Log *slog.Logger
	// AtomicBatch: outbox rounds of at least this many events go to JetStream as one atomic
	// batch (pgstore.Relay.PublishInAtomicBatches); 0 publishes event by event.
	AtomicBatch int
	// AdminPool, optional, connects as the owner of the ledger schema (search_path ledger).
	// New runs the migrations with it and grants Config.WriterRole its run-time rights; it
	// is used for nothing else and may be closed once New returns. Without it, Pool runs the
	// migrations and owns the tables: the triggers still reject changes, but that role could
	// drop them.
	AdminPool *pgxpool.Pool
}

// Service is the ledger.
type Service struct {
	cfg    Config
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	cons   jetstream.Consumer
	log    *slog.Logger
	tracer trace.Tracer

	key     ed25519.PrivateKey
	trusted []ed25519.PublicKey
	relay   *pgstore.Relay
	lastCP  atomic.Int64
	cpDue   chan struct{}

	signer       note.Signer
	witnesses    []Witness
	signedMu     sync.Mutex
	signed       *signedTree // the newest checkpoint this process signed or checked
	inconsistent atomic.Pointer[Inconsistency]

	appended appendSignal
}

// New migrates the ledger schema and creates (or updates) the durable consumer.
func New(ctx context.Context, cfg Config, d Deps) (*Service, error) {
	cfg.defaults()
	if d.Pool == nil {
		return nil, errors.New("ledger: Deps.Pool is required")
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	s := &Service{cfg: cfg, pool: d.Pool, js: d.JS, log: d.Log.With("service", "ledger"), tracer: telemetry.Tracer("tenure/ledger"),
		cpDue: make(chan struct{}, 1)}
	switch {
	case cfg.SigningKey != nil:
		if len(cfg.SigningKey) != ed25519.PrivateKeySize {
			return nil, errors.New("ledger: Config.SigningKey is not an Ed25519 private key")
		}
		s.key = cfg.SigningKey
	case cfg.KeyFile != "":
		k, err := LoadOrCreateKey(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("ledger: signing key %s: %w", cfg.KeyFile, err)
		}
		s.key = k
	default:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		s.key = k
		s.log.WarnContext(ctx, "no ledger signing key configured: signing checkpoints with an ephemeral key (set the ledger key file)")
	}
	s.trusted = append([]ed25519.PublicKey{s.PublicKey()}, cfg.TrustedKeys...)
	signer, err := noteSigner(cfg.Origin, s.key)
	if err != nil {
		return nil, fmt.Errorf("ledger: origin %q: %w", cfg.Origin, err)
	}
	s.signer = signer
	if d.JS != nil {
		s.witnesses = append(s.witnesses, &StreamWitness{JS: d.JS})
	}
	if cfg.WitnessDir != "" {
		s.witnesses = append(s.witnesses, DirWitness{Dir: cfg.WitnessDir})
	}
	s.witnesses = append(s.witnesses, cfg.Witnesses...)
	switch {
	case d.AdminPool != nil:
		if err := Setup(ctx, d.AdminPool, cfg.WriterRole); err != nil {
			return nil, err
		}
	case cfg.WriterRole != "":
		// A writer cannot migrate: `tenure setup` ran Setup as the owner.
		if err := checkMigrated(ctx, d.Pool); err != nil {
			return nil, err
		}
	default:
		if err := pgstore.Migrate(ctx, d.Pool, Schema, migrations, "migrations"); err != nil {
			return nil, fmt.Errorf("ledger: %w", err)
		}
	}
	var lastCP int64
	if err := s.pool.QueryRow(ctx, "SELECT coalesce(max(seq), 0) FROM checkpoints").Scan(&lastCP); err != nil {
		return nil, fmt.Errorf("ledger: read checkpoints: %w", err)
	}
	s.lastCP.Store(lastCP)
	if d.JS != nil {
		cons, err := d.JS.CreateOrUpdateConsumer(ctx, natsx.EventsStream, consumerConfig(cfg))
		if err != nil {
			return nil, fmt.Errorf("ledger: consumer %s on %s: %w", Durable, natsx.EventsStream, err)
		}
		s.cons = cons
		s.relay = pgstore.NewRelay(d.Pool, d.JS, s.log)
		s.relay.PublishInAtomicBatches(d.AtomicBatch)
	}
	return s, nil
}

// Setup migrates the ledger schema as its owner (pool: connected as the owner, search_path
// ledger) and, when writerRole is set, grants that run-time role only what the ledger needs
// (see Config.WriterRole). It is idempotent: New runs it when Deps.AdminPool is given, and
// `tenure setup` can run it instead so the services never hold the owner's credentials.
func Setup(ctx context.Context, pool *pgxpool.Pool, writerRole string) error {
	if err := pgstore.Migrate(ctx, pool, Schema, migrations, "migrations"); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if writerRole != "" {
		if err := grantWriter(ctx, pool, writerRole); err != nil {
			return fmt.Errorf("ledger: grant %s: %w", writerRole, err)
		}
	}
	return nil
}

// checkMigrated fails unless every embedded migration has been applied.
func checkMigrated(ctx context.Context, pool *pgxpool.Pool) error {
	applied, err := pgstore.Applied(ctx, pool, Schema)
	if err != nil {
		return fmt.Errorf("ledger: read applied migrations (run `tenure setup` first?): %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	for _, n := range names {
		if !slices.Contains(applied, Schema+"/"+path.Base(n)) {
			return fmt.Errorf("ledger: migration %s is not applied: run ledger.Setup (`tenure setup`) as the owner of schema %s", path.Base(n), Schema)
		}
	}
	return nil
}

// grantWriter gives the run-time role exactly what the ledger needs, idempotently.
func grantWriter(ctx context.Context, admin *pgxpool.Pool, role string) error {
	r := pgx.Identifier{role}.Sanitize()
	sc := pgx.Identifier{Schema}.Sanitize()
	stmts := []string{
		"REVOKE ALL ON ALL TABLES IN SCHEMA " + sc + " FROM " + r,
		"GRANT USAGE ON SCHEMA " + sc + " TO " + r,
		"GRANT SELECT, INSERT ON " + sc + ".entries, " + sc + ".checkpoints TO " + r,
		// The head moves forward only (trigger); the outbox and inbox are working tables.
		"GRANT SELECT, UPDATE ON " + sc + ".head TO " + r,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON " + sc + ".outbox, " + sc + ".inbox TO " + r,
		"GRANT USAGE ON ALL SEQUENCES IN SCHEMA " + sc + " TO " + r,
		"GRANT SELECT ON " + sc + ".schema_migrations, " + sc + ".prunes, " + sc + ".legacy TO " + r,
	}
	for _, q := range stmts {
		if _, err := admin.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// consumerConfig is the ledger's durable pull consumer: no filter (every subject of the
// stream), explicit acks, and unlimited deliveries, because the ledger must never give up on
// an event (there is no dead letter for the audit trail: it retries until it records).
func consumerConfig(cfg Config) jetstream.ConsumerConfig {
	c := natsx.ConsumerSpec{Durable: Durable, AckWait: cfg.AckWait, MaxAckPending: cfg.MaxAckPending}.Config()
	c.Description = "tenure ledger: records every event in the Merkle tree"
	c.MaxDeliver = -1
	c.FilterSubject = ""
	c.FilterSubjects = nil
	return c
}

// Run records events until ctx ends. A batch in progress is finished (committed and acked)
// before Run returns. When the subscription breaks (the consumer was deleted, say), Run
// recreates the consumer and carries on, logging the cause.
func (s *Service) Run(ctx context.Context) error {
	if s.cons == nil {
		s.log.InfoContext(ctx, "no JetStream: the ledger answers queries but records nothing")
		<-ctx.Done()
		return nil
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	wg.Go(func() { _ = s.relay.Run(bg) })
	wg.Go(func() { s.checkpointLoop(bg) })
	delay := time.Second
	for {
		err := s.consume(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.log.ErrorContext(ctx, "ledger consumer stopped; recreating it", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
		cons, err := s.js.CreateOrUpdateConsumer(ctx, natsx.EventsStream, consumerConfig(s.cfg))
		if err != nil {
			s.log.ErrorContext(ctx, "recreate ledger consumer", "err", err)
			continue
		}
		s.cons = cons
		delay = time.Second
	}
}

// consume gathers batches (up to BatchSize, waiting at most BatchWindow after the first
// message) and records them until ctx ends or the subscription breaks.
func (s *Service) consume(ctx context.Context) error {
	it, err := s.cons.Messages(jetstream.PullMaxMessages(2 * s.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer it.Stop()
	batch := make([]jetstream.Msg, 0, s.cfg.BatchSize)
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return err
			}
			s.log.WarnContext(ctx, "next message", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		batch = append(batch[:0], msg)
		deadline := time.Now().Add(s.cfg.BatchWindow)
		for len(batch) < s.cfg.BatchSize {
			wait := time.Until(deadline)
			if wait <= 0 {
				break
			}
			m, err := it.Next(jetstream.NextMaxWait(wait))
			if err != nil {
				break // timeout, or closed: the next outer Next tells which
			}
			batch = append(batch, m)
		}
		s.record(ctx, batch)
	}
}

// record appends a batch and acks it, retrying until it commits or ctx ends. It never drops
// an event: on shutdown the batch is nakked so another replica records it at once.
func (s *Service) record(ctx context.Context, msgs []jetstream.Msg) {
	es := make([]*entry, len(msgs))
	for i, m := range msgs {
		es[i] = entryOf(m)
	}
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		// An append that has started is finished even when ctx ends meanwhile.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.AckWait/2)
		n, err := s.appendEntries(actx, es)
		cancel()
		if err == nil {
			for _, m := range msgs {
				if err := m.Ack(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
					s.log.WarnContext(ctx, "ack", "subject", m.Subject(), "err", err)
				}
			}
			s.log.DebugContext(ctx, "recorded", "events", len(msgs), "new", n)
			return
		}
		s.log.ErrorContext(ctx, "append failed; retrying", "events", len(msgs), "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			for _, m := range msgs {
				_ = m.Nak()
			}
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
		for _, m := range msgs {
			_ = m.InProgress() // keep the deliveries while retrying
		}
	}
}

// appendEntries appends es, in order, to the tree in one transaction and returns how many
// were new. Events already in the ledger (by msg_id), and repeats within es, are skipped.
// It is safe to call concurrently, from any number of processes: the head row lock
// serializes appenders. es are not modified.
func (s *Service) appendEntries(ctx context.Context, es []*entry) (n int, err error) {
	if len(es) == 0 {
		return 0, nil
	}
	ctx, span := s.tracer.Start(ctx, "ledger append", trace.WithAttributes(attribute.Int("ledger.batch", len(es))))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.SetAttributes(attribute.Int("ledger.appended", n))
		span.End()
	}()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.MsgID
	}
	var (
		seq      int64
		root     []byte
		rng      []byte
		now      time.Time
		recorded []string
	)
	// Lock the head, then (seeing everything committed before the lock was granted) read the
	// clock and which of the ids are already recorded. The lookup is planned for its ids each
	// time (QueryExecModeExec): a plan cached while the table was small scans the whole
	// ledger once it is not, which made appends slow down as the ledger grew.
	if err := tx.QueryRow(ctx, "SELECT seq, hash, tree_range FROM head FOR UPDATE").Scan(&seq, &root, &rng); err != nil {
		return 0, fmt.Errorf("lock head: %w", err)
	}
	if err := tx.QueryRow(ctx, "SELECT clock_timestamp(), ARRAY(SELECT msg_id FROM entries WHERE msg_id = ANY($1))",
		pgx.QueryExecModeExec, ids).Scan(&now, &recorded); err != nil {
		return 0, fmt.Errorf("find recorded events: %w", err)
	}
	tree, err := headRange(ctx, tx, seq, rng)
	if err != nil {
		return 0, err
	}
	now = dbTime(now)
	skip := make(map[string]struct{}, len(es)+len(recorded))
	for _, id := range recorded {
		skip[id] = struct{}{}
	}
	rows := make([][]any, 0, len(es))
	for _, in := range es {
		if _, dup := skip[in.MsgID]; dup {
			continue
		}
		skip[in.MsgID] = struct{}{}
		e := *in
		seq++
		e.Seq = seq
		e.RecordedAt = now
		if e.EventTime.IsZero() {
			e.EventTime = now
		}
		e.PrevHash = nil
		e.Hash = leafHash(&e)
		if err := tree.Append(e.Hash, nil); err != nil {
			return 0, err
		}
		rows = append(rows, rowOf(&e))
	}
	if len(rows) == 0 {
		return 0, tx.Commit(ctx)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"entries"}, entryColumns, pgx.CopyFromRows(rows)); err != nil {
		return 0, fmt.Errorf("insert entries: %w", err)
	}
	if _, err := tx.Exec(ctx, "UPDATE head SET seq = $1, hash = $2, tree_range = $3", seq, rootOf(tree), encodeRange(tree)); err != nil {
		return 0, fmt.Errorf("move head: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	s.afterAppend(seq)
	return len(rows), nil
}

// headRange is the head's compact range: stored, or (the first append after migration 005,
// on a ledger with legacy entries) computed from the stored hashes of entries 1..seq.
func headRange(ctx context.Context, q pgx.Tx, seq int64, stored []byte) (*compact.Range, error) {
	if stored != nil || seq == 0 {
		r, err := decodeRange(seq, stored)
		if err != nil {
			return nil, fmt.Errorf("the head's tree range: %w", err)
		}
		return r, nil
	}
	return rangeFromHashes(ctx, q, 0, rangeFactory.NewEmptyRange(0), seq)
}

// rangeFromHashes extends r (ending at from) with the stored hashes of entries from+1..to.
func rangeFromHashes(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, from int64, r *compact.Range, to int64) (*compact.Range, error) {
	rows, err := q.Query(ctx, "SELECT seq, hash FROM entries WHERE seq > $1 AND seq <= $2 ORDER BY seq", from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	next := from + 1
	var (
		seq int64
		h   []byte
	)
	for rows.Next() {
		if err := rows.Scan(&seq, &h); err != nil {
			return nil, err
		}
		if seq != next {
			return nil, fmt.Errorf("entry %d is missing", next)
		}
		if err := r.Append(h, nil); err != nil {
			return nil, err
		}
		next++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if next != to+1 {
		return nil, fmt.Errorf("the entries end at %d, not %d", next-1, to)
	}
	return r, nil
}

var entryColumns = []string{"seq", "msg_id", "subject", "type", "source", "worker_id", "system", "actor",
	"event_time", "recorded_at", "stream_seq", "headers", "payload", "prev_hash", "hash", "trace_id"}

// rowOf is e's values in the order of entryColumns.
func rowOf(e *entry) []any {
	return []any{e.Seq, e.MsgID, e.Subject, e.Type, e.Source, e.WorkerID, e.System, e.Actor,
		e.EventTime, e.RecordedAt, e.StreamSeq, e.Headers, e.Payload, e.PrevHash, e.Hash, e.TraceID}
}

// RegisterGRPC registers LedgerService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	ledgerv1.RegisterLedgerServiceServer(g, &grpcServer{s: s})
}

// AuthRules lets auditors, operators and security query and verify the ledger (admin always).
func (s *Service) AuthRules() authn.Rules {
	roles := []authn.Role{authn.RoleAuditor, authn.RoleOperator, authn.RoleSecurity}
	return authn.Rules{
		ledgerv1.LedgerService_Query_FullMethodName:            roles,
		ledgerv1.LedgerService_Verify_FullMethodName:           roles,
		ledgerv1.LedgerService_ListCheckpoints_FullMethodName:  roles,
		ledgerv1.LedgerService_GetPublicKey_FullMethodName:     roles,
		ledgerv1.LedgerService_Evidence_FullMethodName:         roles,
		ledgerv1.LedgerService_ExportEvidence_FullMethodName:   roles,
		ledgerv1.LedgerService_WatchRevocations_FullMethodName: roles,
		// Archives are for the retention process: auditors and admins (admin always passes).
		ledgerv1.LedgerService_Archive_FullMethodName: {authn.RoleAuditor},
	}
}
