package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgcluster"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/webhook"
)

// DevOptions configure `tenure dev`.
type DevOptions struct {
	// DataDir holds NATS's store, the Postgres cluster, generated secrets and config files.
	DataDir string
	// DatabaseURL, when set, is a superuser URL of an existing server to use instead of
	// starting a cluster.
	DatabaseURL string
	HTTPAddr    string
	GRPCAddr    string
	// NATSPort for the embedded server; -1 picks a free port.
	NATSPort int
	// NATSSyncInterval is how often JetStream fsyncs (0: every write). Dev data is
	// disposable, but the setting is explicit here as it must be in production.
	NATSSyncInterval time.Duration
	CaseDeadline     time.Duration
	Log              *slog.Logger
}

// DevSecrets are generated once per data directory.
type DevSecrets struct {
	WebhookSource string            `yaml:"webhook_source"`
	WebhookSecret string            `yaml:"webhook_secret"`
	Tokens        map[string]string `yaml:"tokens"` // role → token
}

// CtlConfig is what tenurectl reads to reach a tenure: written by `tenure dev`.
type CtlConfig struct {
	GRPCAddr string `yaml:"grpc_addr"`
	Token    string `yaml:"token"`
	Insecure bool   `yaml:"insecure"`
	Webhook  struct {
		URL    string `yaml:"url"`
		Source string `yaml:"source"`
		Secret string `yaml:"secret"`
	} `yaml:"webhook"`
}

// Dev is a running `tenure dev`.
type Dev struct {
	*Stack
	DataDir       string
	NATSURL       string
	DatabaseURL   string
	Secrets       DevSecrets
	CtlConfigPath string
	nats          *server.Server
	cluster       *pgcluster.Cluster
}

// StartDev starts the whole system on the embedded default.
func StartDev(ctx context.Context, o DevOptions) (_ *Dev, err error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	d := &Dev{DataDir: dir}
	defer func() {
		if err != nil {
			d.stopInfra()
		}
	}()

	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), Port: o.NATSPort,
		SyncInterval: o.NATSSyncInterval, SyncAlways: o.NATSSyncInterval == 0})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	d.nats, d.NATSURL = ns, ns.ClientURL()

	admin := o.DatabaseURL
	if admin == "" {
		c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "postgres")})
		if err != nil {
			return nil, fmt.Errorf("embedded PostgreSQL: %w", err)
		}
		d.cluster = c
		admin = c.URL("postgres")
	}
	tenureURL, err := ensureDatabase(ctx, admin, "tenure")
	if err != nil {
		return nil, err
	}
	d.DatabaseURL = tenureURL
	if err := SetupDatabase(ctx, tenureURL, nil); err != nil {
		return nil, err
	}
	targetURL, err := EnsureTargetRole(ctx, tenureURL, "")
	if err != nil {
		return nil, err
	}

	if d.Secrets, err = loadOrCreateSecrets(filepath.Join(dir, "secrets.yaml")); err != nil {
		return nil, err
	}
	files, err := d.writeConfig(targetURL)
	if err != nil {
		return nil, err
	}
	cfg := defaultServeConfig()
	cfg.Target = "all"
	cfg.NATSURL = d.NATSURL
	cfg.EnsureStreams = true
	if o.NATSSyncInterval == 0 {
		// Every write is fsynced: backlogs go out in atomic batches, one fsync each.
		cfg.NATSAtomicBatch = natsx.AtomicMinSyncAlways
	}
	cfg.HTTPAddr, cfg.GRPCAddr = or(o.HTTPAddr, "127.0.0.1:8080"), or(o.GRPCAddr, "127.0.0.1:9090")
	cfg.TokensFile, cfg.WebhookSources, cfg.Policy, cfg.Connectors = files["tokens"], files["sources"], files["policy"], files["connectors"]
	cfg.LedgerKeyFile = filepath.Join(dir, "ledger.key")
	if o.CaseDeadline > 0 {
		cfg.CaseDeadline = o.CaseDeadline
	}
	cfg.DatabaseURLs = map[string]string{}
	for _, svc := range Targets {
		// Each service connects as its own role, confined to its schema, as in production.
		if cfg.DatabaseURLs[svc], err = pgstore.ServiceURL(tenureURL, svc, ""); err != nil {
			return nil, err
		}
	}
	st, err := Start(ctx, &cfg, Options{Log: o.Log})
	if err != nil {
		return nil, err
	}
	d.Stack = st
	if err := d.writeCtlConfig(); err != nil {
		st.Stop()
		return nil, err
	}
	return d, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Stop stops the services, then NATS and the Postgres cluster it started.
func (d *Dev) Stop() error {
	if d.Stack != nil {
		d.Stack.Stop()
	}
	return d.stopInfra()
}

func (d *Dev) stopInfra() error {
	if d.nats != nil {
		d.nats.Shutdown()
		d.nats.WaitForShutdown()
		d.nats = nil
	}
	if d.cluster != nil {
		err := d.cluster.Stop()
		d.cluster = nil
		return err
	}
	return nil
}

// PrintEndpoints tells the user where everything is.
func (d *Dev) PrintEndpoints(w io.Writer) {
	fmt.Fprintf(w, `tenure dev is running
  webhooks   POST http://%s/webhooks/%s   (Standard Webhooks, secret in %s)
  health     http://%s/healthz  http://%s/readyz
  gRPC       %s   (tokens in %s)
  SSF        %s   (Shared Signals transmitter: revocations as SETs; security token)
  NATS       %s   (JetStream store %s)
  Postgres   %s
  tenurectl  reads %s
Try: tenurectl webhook send --type hire --worker w-1001 --job-code RN --email ada@clinic.example
     tenurectl case w-1001
     tenurectl revocations watch
Stop with Ctrl-C.
`, d.HTTPAddr, d.Secrets.WebhookSource, filepath.Join(d.DataDir, "secrets.yaml"), d.HTTPAddr, d.HTTPAddr, d.GRPCAddr,
		filepath.Join(d.DataDir, "secrets.yaml"), d.SSFURL(), d.NATSURL, filepath.Join(d.DataDir, "nats"), redactURL(d.DatabaseURL), d.CtlConfigPath)
}

// SSFURL is the transmitter's discovery document.
func (d *Dev) SSFURL() string {
	if d.SSF == nil {
		return "(not running)"
	}
	return d.SSF.URL()
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<database URL>"
	}
	return u.Redacted()
}

func ensureDatabase(ctx context.Context, adminURL, name string) (string, error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", fmt.Errorf("PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return "", err
		}
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// EnsureTargetRole creates tenure_target, the role the demo connectors (PostgreSQL roles as
// accounts) use: it may create roles and end their sessions, nothing else. It returns a URL
// of the database as that role.
func EnsureTargetRole(ctx context.Context, adminURL, password string) (string, error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tenure_target')").Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE ROLE tenure_target LOGIN CREATEROLE"); err != nil {
			return "", err
		}
	}
	var db string
	conn.QueryRow(ctx, "SELECT current_database()").Scan(&db)
	if password != "" {
		if _, err := conn.Exec(ctx, "ALTER ROLE tenure_target PASSWORD "+quoteLiteral(password)); err != nil {
			return "", err
		}
	}
	// CONNECT to reach the cluster; pg_signal_backend to end a disabled role's sessions.
	for _, st := range []string{"GRANT CONNECT ON DATABASE " + pgx.Identifier{db}.Sanitize() + " TO tenure_target", "GRANT pg_signal_backend TO tenure_target"} {
		if _, err := conn.Exec(ctx, st); err != nil {
			return "", err
		}
	}
	u, _ := url.Parse(adminURL)
	u.User = url.User("tenure_target")
	if password != "" {
		u.User = url.UserPassword("tenure_target", password)
	}
	return u.String(), nil
}

func loadOrCreateSecrets(path string) (DevSecrets, error) {
	var s DevSecrets
	if b, err := os.ReadFile(path); err == nil {
		if err := yaml.Unmarshal(b, &s); err != nil {
			return s, fmt.Errorf("%s: %w", path, err)
		}
		return s, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, err
	}
	s = DevSecrets{WebhookSource: "demo", WebhookSecret: webhook.NewSecret(), Tokens: map[string]string{}}
	for _, r := range []authn.Role{authn.RoleAdmin, authn.RoleOperator, authn.RoleApprover, authn.RoleAuditor, authn.RoleSecurity} {
		s.Tokens[string(r)] = "tnr_" + string(r) + "_" + randomHex(16)
	}
	b, _ := yaml.Marshal(s)
	return s, os.WriteFile(path, append([]byte("# Generated by tenure dev. Secrets: keep this file private.\n"), b...), 0o600)
}

func (d *Dev) writeConfig(targetURL string) (map[string]string, error) {
	files := map[string]string{
		"tokens": filepath.Join(d.DataDir, "tokens.yaml"), "sources": filepath.Join(d.DataDir, "webhook-sources.yaml"),
		"policy": filepath.Join(d.DataDir, "policy.yaml"), "connectors": filepath.Join(d.DataDir, "connectors.yaml"),
	}
	var tf authn.TokensFile
	for role, tok := range d.Secrets.Tokens {
		tf.Tokens = append(tf.Tokens, authn.TokenEntry{Name: "dev-" + role, Roles: []authn.Role{authn.Role(role)}, TokenSHA256: authn.HashToken(tok)})
	}
	tb, _ := yaml.Marshal(tf)
	sources := fmt.Sprintf("# Webhook sources of tenure dev.\nsources:\n  %s:\n    secrets: [%q]\n    tolerance: 5m\n", d.Secrets.WebhookSource, d.Secrets.WebhookSecret)
	writes := map[string][]byte{
		files["tokens"]:     append([]byte("# Bearer tokens of tenure dev, stored as SHA-256 (the tokens are in secrets.yaml).\n"), tb...),
		files["sources"]:    []byte(sources),
		files["connectors"]: demoConnectors(targetURL),
	}
	// The policy is written once so a user can edit it.
	if _, err := os.Stat(files["policy"]); errors.Is(err, os.ErrNotExist) {
		writes[files["policy"]] = demoPolicy
	}
	for p, b := range writes {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return nil, err
		}
	}
	return files, nil
}

func (d *Dev) writeCtlConfig() error {
	var c CtlConfig
	c.GRPCAddr, c.Token, c.Insecure = d.GRPCAddr, d.Secrets.Tokens[string(authn.RoleAdmin)], true
	c.Webhook.URL = "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
	c.Webhook.Source, c.Webhook.Secret = d.Secrets.WebhookSource, d.Secrets.WebhookSecret
	b, _ := yaml.Marshal(c)
	d.CtlConfigPath = filepath.Join(d.DataDir, "tenurectl.yaml")
	return os.WriteFile(d.CtlConfigPath, append([]byte("# Written by tenure dev for tenurectl.\n"), b...), 0o600)
}
