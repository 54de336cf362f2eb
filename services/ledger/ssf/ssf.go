// Package ssf is tenure's OpenID Shared Signals Framework 1.0 transmitter. It turns the
// revocation stream (tenure.revocation.>) into Security Event Tokens (RFC 8417), signed as
// JWTs with a key published as a JWKS, and delivers them to each receiver's event stream by
// push (RFC 8935) or poll (RFC 8936). Receivers manage their streams with the SSF management
// API, authenticated by bearer tokens with the security role (pkg/authn).
//
// Streams, subjects and undelivered SETs are kept in PostgreSQL (schema ssf), so a restart
// loses nothing; the JetStream consumer acks a revocation only after its SETs are stored.
package ssf

import (
	"context"
	"crypto/rsa"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema holds the transmitter's state.
const Schema = "ssf"

// Durable is the transmitter's consumer of tenure.revocation.> on the events stream.
const Durable = "ledger-ssf"

// Delivery methods (SSF 1.0 §10.3.1).
const (
	MethodPush = "urn:ietf:rfc:8935"
	MethodPoll = "urn:ietf:rfc:8936"
)

// Event types tenure transmits.
const (
	EventAccountDisabled  = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
	EventSessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	EventCredentialChange = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
	EventVerification     = "https://schemas.openid.net/secevent/ssf/event-type/verification"
	EventStreamUpdated    = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
)

// EventsSupported are the revocation events a stream can request.
var EventsSupported = []string{EventAccountDisabled, EventSessionRevoked, EventCredentialChange}

// Config tunes the transmitter.
type Config struct {
	// Issuer is the transmitter's public base URL (https in production): the SETs' iss and
	// the base of every endpoint. Required.
	Issuer string
	// SigningKey signs SETs (RS256). When nil it is read from KeyFile, created there when
	// missing. Every replica must use the same key.
	SigningKey *rsa.PrivateKey
	KeyFile    string
	// RetiredKeyFiles are keys that signed SETs before a rotation (PEM: the old private key
	// file, or its "PUBLIC KEY"). They are published in the JWKS and never sign, so receivers
	// still verify the SETs signed with them that are queued, retried or re-polled. Drop one
	// once no SET it signed can still be delivered. RetiredKeys are the same, in memory.
	RetiredKeyFiles []string
	RetiredKeys     []*rsa.PublicKey
	// Tenant, when set, makes the default subject a complex subject with this tenant as an
	// opaque identifier, for receivers that serve several organisations.
	Tenant string
	// DefaultSubjects is "ALL" (default: every worker's revocations reach every stream, except
	// subjects a receiver removed) or "NONE" (only subjects a receiver added).
	DefaultSubjects string
	// AllowHTTP accepts http:// push endpoints and issuer (development and tests only).
	AllowHTTP bool
	// MinVerificationInterval between two verification requests on a stream (default 10s).
	MinVerificationInterval time.Duration
	// PushTimeout bounds one push request (default 10s). PushBackoff is the first retry
	// delay, doubled per attempt up to PushMaxBackoff (defaults 1s and 5m).
	PushTimeout    time.Duration
	PushBackoff    time.Duration
	PushMaxBackoff time.Duration
	// PushWorkers deliver SETs in parallel (default 8).
	PushWorkers int
	// PollWait is how long a poll without returnImmediately waits for a SET (default 15s).
	PollWait time.Duration
	// WriterRole is the run-time database role, granted its rights on the ssf schema by Setup
	// when Deps.AdminPool is given.
	WriterRole string
	// Remember is how long a delivered SET's jti is kept (its token is dropped at delivery),
	// so that a revocation consumed again is not sent again: at least the events stream's
	// MaxAge (default 31 days, one more than natsx.DefaultStreamOptions).
	Remember time.Duration
}

func (c *Config) defaults() {
	if c.DefaultSubjects == "" {
		c.DefaultSubjects = "ALL"
	}
	if c.MinVerificationInterval <= 0 {
		c.MinVerificationInterval = 10 * time.Second
	}
	if c.PushTimeout <= 0 {
		c.PushTimeout = 10 * time.Second
	}
	if c.PushBackoff <= 0 {
		c.PushBackoff = time.Second
	}
	if c.PushMaxBackoff <= 0 {
		c.PushMaxBackoff = 5 * time.Minute
	}
	if c.PushWorkers <= 0 {
		c.PushWorkers = 8
	}
	if c.PollWait <= 0 {
		c.PollWait = 15 * time.Second
	}
	if c.Remember <= 0 {
		c.Remember = 31 * 24 * time.Hour
	}
}

// Deps are the transmitter's connections.
type Deps struct {
	// Pool reaches schema ssf (any search_path: queries name the schema).
	Pool *pgxpool.Pool
	// AdminPool, optional, connects as the owner of schema ssf: New migrates with it and
	// grants Config.WriterRole its rights.
	AdminPool *pgxpool.Pool
	// JS reaches the events stream; nil for an instance that serves the API only.
	JS   jetstream.JetStream
	Auth *authn.Authenticator
	Log  *slog.Logger
	// HTTPClient pushes SETs (default: a client that follows no redirects).
	HTTPClient *http.Client
}

// Transmitter is the SSF transmitter.
type Transmitter struct {
	cfg    Config
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	auth   *authn.Authenticator
	log    *slog.Logger
	client *http.Client

	key    *rsa.PrivateKey
	kid    string
	signer jose.Signer
	// jwks is what /ssf/jwks.json serves: the signing key, then the retired ones.
	jwks   jose.JSONWebKeySet
	issuer *url.URL

	queued signal // SETs were stored: wakes the pusher and long polls

	slots    chan struct{} // bounds concurrent pushes (PushWorkers)
	inflight sync.WaitGroup
	runMu    sync.Mutex
	run      context.Context // set while Run runs: SETs are pushed directly then
}

func (t *Transmitter) pushCtx() context.Context {
	t.runMu.Lock()
	defer t.runMu.Unlock()
	return t.run
}

// New checks the configuration, migrates (or checks) the schema and prepares the signer.
func New(ctx context.Context, cfg Config, d Deps) (*Transmitter, error) {
	cfg.defaults()
	if d.Pool == nil {
		return nil, errors.New("ssf: Deps.Pool is required")
	}
	if d.Auth == nil {
		return nil, errors.New("ssf: Deps.Auth is required: receivers authenticate with bearer tokens")
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if cfg.DefaultSubjects != "ALL" && cfg.DefaultSubjects != "NONE" {
		return nil, fmt.Errorf("ssf: DefaultSubjects must be ALL or NONE, not %q", cfg.DefaultSubjects)
	}
	iss, err := url.Parse(strings.TrimSuffix(cfg.Issuer, "/"))
	switch {
	case cfg.Issuer == "":
		return nil, errors.New("ssf: Config.Issuer is required (the transmitter's public https URL)")
	case err != nil || iss.Host == "" || iss.RawQuery != "" || iss.Fragment != "":
		return nil, fmt.Errorf("ssf: issuer %q must be an absolute URL without query or fragment", cfg.Issuer)
	case iss.Scheme != "https" && !(cfg.AllowHTTP && iss.Scheme == "http"):
		return nil, fmt.Errorf("ssf: issuer %q must use https", cfg.Issuer)
	}
	t := &Transmitter{cfg: cfg, pool: d.Pool, js: d.JS, auth: d.Auth, log: d.Log.With("service", "ssf"), client: d.HTTPClient, issuer: iss,
		slots: make(chan struct{}, cfg.PushWorkers)}
	if t.client == nil {
		t.client = &http.Client{
			Timeout: cfg.PushTimeout,
			// A receiver's endpoint is where SETs go; a redirect elsewhere is not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	switch {
	case cfg.SigningKey != nil:
		t.key = cfg.SigningKey
	case cfg.KeyFile != "":
		if t.key, err = LoadOrCreateKey(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("ssf: signing key: %w", err)
		}
	default:
		return nil, errors.New("ssf: Config.SigningKey or Config.KeyFile is required")
	}
	if t.kid, err = keyID(&t.key.PublicKey); err != nil {
		return nil, err
	}
	if t.jwks, err = publishedKeys(&t.key.PublicKey, t.kid, cfg.RetiredKeys, cfg.RetiredKeyFiles); err != nil {
		return nil, fmt.Errorf("ssf: %w", err)
	}
	t.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: t.key, KeyID: t.kid, Algorithm: string(jose.RS256)}},
		(&jose.SignerOptions{}).WithType("secevent+jwt"))
	if err != nil {
		return nil, fmt.Errorf("ssf: signer: %w", err)
	}
	switch {
	case d.AdminPool != nil:
		if err := Setup(ctx, d.AdminPool, cfg.WriterRole); err != nil {
			return nil, err
		}
	case cfg.WriterRole != "":
		if err := checkMigrated(ctx, d.Pool); err != nil {
			return nil, err
		}
	default:
		if err := pgstore.Migrate(ctx, d.Pool, Schema, migrations, "migrations"); err != nil {
			return nil, fmt.Errorf("ssf: %w", err)
		}
	}
	return t, nil
}

// Setup migrates schema ssf as its owner (pool) and grants writerRole what the transmitter
// needs at run time: reading and changing its streams, subjects and pending SETs. This grant
// is separate from the ledger's: the ledger role still may only INSERT and SELECT entries.
func Setup(ctx context.Context, pool *pgxpool.Pool, writerRole string) error {
	if err := pgstore.Migrate(ctx, pool, Schema, migrations, "migrations"); err != nil {
		return fmt.Errorf("ssf: %w", err)
	}
	if writerRole == "" {
		return nil
	}
	r := pgx.Identifier{writerRole}.Sanitize()
	for _, q := range []string{
		"GRANT USAGE ON SCHEMA ssf TO " + r,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ssf.streams, ssf.subjects, ssf.sets TO " + r,
		"GRANT USAGE ON ALL SEQUENCES IN SCHEMA ssf TO " + r,
		"GRANT SELECT ON ssf.schema_migrations TO " + r,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("ssf: grant %s: %s: %w", writerRole, q, err)
		}
	}
	return nil
}

func checkMigrated(ctx context.Context, pool *pgxpool.Pool) error {
	applied, err := pgstore.Applied(ctx, pool, Schema)
	if err != nil {
		return fmt.Errorf("ssf: read applied migrations (run `tenure setup` first?): %w", err)
	}
	if !slices.Contains(applied, Schema+"/001_ssf.sql") {
		return errors.New("ssf: schema ssf is not migrated: run `tenure setup` as the database admin")
	}
	return nil
}

// Issuer is the transmitter's issuer URL.
func (t *Transmitter) Issuer() string { return t.issuer.String() }

// KeyID is the kid of the signing key in the JWKS.
func (t *Transmitter) KeyID() string { return t.kid }

// endpoint is the absolute URL of a transmitter path.
func (t *Transmitter) endpoint(p string) string { return t.issuer.String() + p }

// Run consumes revocations, pushes SETs and purges old tombstones until ctx ends.
func (t *Transmitter) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t.runMu.Lock()
	t.run = ctx
	t.runMu.Unlock()
	defer func() {
		t.runMu.Lock()
		t.run = nil
		t.runMu.Unlock()
		cancel()
		t.inflight.Wait()
	}()
	wg.Go(func() { t.pushLoop(ctx) })
	wg.Go(func() { t.purgeLoop(ctx) })
	if t.js == nil {
		t.log.InfoContext(ctx, "no JetStream: the SSF transmitter serves its API but sees no revocations")
		<-ctx.Done()
		return nil
	}
	return t.consume(ctx)
}

// purgeLoop forgets delivered SETs after Config.Remember: as long as JetStream may deliver
// their revocation again (the stream's MaxAge), so that nothing is ever sent twice.
func (t *Transmitter) purgeLoop(ctx context.Context) {
	tick := time.NewTicker(10 * time.Minute)
	defer tick.Stop()
	for {
		if _, err := t.pool.Exec(ctx, "DELETE FROM ssf.sets WHERE delivered_at < now() - $1 * interval '1 millisecond'", t.cfg.Remember.Milliseconds()); err != nil && ctx.Err() == nil {
			t.log.WarnContext(ctx, "purge delivered SETs", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// signal wakes every waiter once per fire.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

func base64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
