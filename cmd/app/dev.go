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
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
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
	// Fast runs PostgreSQL without fsync: for tests and benchmarks only, since a crash of
	// the machine can then lose or corrupt committed data. The default keeps fsync on, so a
	// small clinic may run tenure dev as it is.
	Fast bool
	Log  *slog.Logger
}

// DevSecrets are generated once per data directory.
type DevSecrets struct {
	WebhookSource string            `yaml:"webhook_source"`
	WebhookSecret string            `yaml:"webhook_secret"`
	Tokens        map[string]string `yaml:"tokens"` // role → token
	// NATS maps each NATS user of deploy/nats (admin, the services, security) to its
	// password: the embedded server refuses anyone else.
	NATS map[string]string `yaml:"nats_passwords"`
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
	// Durability says how PostgreSQL stores commits: "durable (fsync on)" or the fast mode.
	Durability string
	// TookOver is the pid of a PostgreSQL server that a killed tenure dev left running on
	// this data directory and that this start stopped; 0 if none.
	TookOver int
	nats     *server.Server
	cluster  *pgcluster.Cluster
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

	// PostgreSQL first: its directory lock says whether another tenure dev owns this data
	// directory, before anything else (NATS's store) is touched.
	admin := o.DatabaseURL
	d.Durability = "external server"
	if admin == "" {
		c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "postgres"), Durable: !o.Fast})
		if err != nil {
			if errors.Is(err, pgcluster.ErrInUse) {
				return nil, fmt.Errorf("another tenure dev is running with the data directory %s", dir)
			}
			return nil, fmt.Errorf("embedded PostgreSQL: %w", err)
		}
		d.cluster, d.TookOver = c, c.TookOver
		if c.TookOver != 0 {
			o.Log.Warn("stopped the PostgreSQL server an earlier tenure dev left running when it was killed", "pid", c.TookOver, "dir", c.Dir())
		}
		admin = c.URL("postgres")
		d.Durability = "durable (fsync on)"
		if o.Fast {
			d.Durability = "FAST (fsync off: for tests and benchmarks; a machine crash can lose committed data)"
		}
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
	files, err := d.writeConfig(targetURL, o.Log)
	if err != nil {
		return nil, err
	}
	connectors, err := LoadConnectors(files["connectors"])
	if err != nil {
		return nil, err
	}
	// The embedded NATS has deploy/nats's users and permissions, for the connectors of this
	// start (each has its own work queue): nobody gets in without a password.
	natsConf, err := natsx.AccountsConfig(ConnectorNames(connectors), d.Secrets.NATS)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(files["nats"], []byte(natsConf), 0o600); err != nil {
		return nil, err
	}
	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), Port: o.NATSPort, ConfigFile: files["nats"],
		SyncInterval: o.NATSSyncInterval, SyncAlways: o.NATSSyncInterval == 0})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	d.nats, d.NATSURL = ns, ns.ClientURL()

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
	st, err := Start(ctx, &cfg, Options{Log: o.Log, NATSUsers: d.NATSUsers()})
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
  NATS       %s   (JetStream store %s; users and passwords in %s, no anonymous clients)
  Postgres   %s   (%s)
  config     yours, never rewritten: %s, %s, %s
             tenure dev's, rewritten at each start: %s
  tenurectl  reads %s
Try: tenurectl webhook send --type hire --worker w-1001 --job-code RN --email ada@clinic.example
     tenurectl case w-1001
     tenurectl revocations watch
Stop with Ctrl-C.
`, d.HTTPAddr, d.Secrets.WebhookSource, filepath.Join(d.DataDir, "secrets.yaml"), d.HTTPAddr, d.HTTPAddr, d.GRPCAddr,
		filepath.Join(d.DataDir, "secrets.yaml"), d.SSFURL(), d.NATSURL, filepath.Join(d.DataDir, "nats"), filepath.Join(d.DataDir, "secrets.yaml"),
		redactURL(d.DatabaseURL), d.Durability,
		filepath.Join(d.DataDir, userConnectorsFile), filepath.Join(d.DataDir, userSourcesFile), filepath.Join(d.DataDir, "policy.yaml"),
		filepath.Join(d.DataDir, generatedDir)+string(filepath.Separator), d.CtlConfigPath)
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
	b, err := os.ReadFile(path)
	if err == nil {
		if err := yaml.Unmarshal(b, &s); err != nil {
			return s, fmt.Errorf("%s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, err
	}
	changed := false
	if s.WebhookSource == "" {
		s.WebhookSource, s.WebhookSecret, changed = "demo", webhook.NewSecret(), true
	}
	if s.Tokens == nil {
		s.Tokens, changed = map[string]string{}, true
		for _, r := range []authn.Role{authn.RoleAdmin, authn.RoleOperator, authn.RoleApprover, authn.RoleAuditor, authn.RoleSecurity} {
			s.Tokens[string(r)] = "tnr_" + string(r) + "_" + randomHex(16)
		}
	}
	// A data directory from before NATS required authentication gets its passwords now.
	if s.NATS == nil {
		s.NATS = map[string]string{}
	}
	for _, u := range natsx.ServiceUsers {
		if s.NATS[u] == "" {
			s.NATS[u], changed = "n"+randomHex(16), true
		}
	}
	if !changed {
		return s, nil
	}
	out, _ := yaml.Marshal(s)
	return s, os.WriteFile(path, append([]byte("# Generated by tenure dev. Secrets: keep this file private.\n"), out...), 0o600)
}

// NATSUsers are the services' NATS users with their passwords from secrets.yaml.
func (d *Dev) NATSUsers() map[string]NATSUser {
	out := map[string]NATSUser{}
	for _, u := range natsx.ServiceUsers {
		out[u] = NATSUser{User: u, Password: d.Secrets.NATS[u]}
	}
	return out
}

// ConnectNATS connects to the embedded NATS as one of its users (see natsx.ServiceUsers),
// with that user's private reply inbox.
func (d *Dev) ConnectNATS(user string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(d.NATSURL, append([]nats.Option{nats.UserInfo(user, d.Secrets.NATS[user]), nats.CustomInboxPrefix("_INBOX_" + user)}, opts...)...)
}

// The files of a dev data directory. The user's own (connectors, webhook sources, policy)
// are created once from a template and never written again; tenure dev's own (the demo
// targets, whose URL holds the port chosen at this start, the demo webhook source, the
// token hashes, the NATS users) live under generated/ and are rewritten at every start.
// Both connectors files and both sources files are loaded, merged, and a name defined in
// both is an error naming file and line.
const (
	userConnectorsFile = "connectors.yaml"
	userSourcesFile    = "webhook-sources.yaml"
	generatedDir       = "generated"
)

const userConnectorsTemplate = `# Your connectors for tenure dev: tenure never rewrites this file. Its demo targets are in
# generated/connectors.yaml (rewritten at each start); a name used in both is an error.
# Add a real target, then name it in policy.yaml (a system with connector: <name>), e.g.:
#
#   connectors:
#     - name: okta
#       type: scim
#       system: okta
#       config:
#         base_url: https://clinic.okta.com/scim/v2
#         token: {env: OKTA_SCIM_TOKEN}
connectors: []
`

const userSourcesTemplate = `# Your webhook sources for tenure dev: tenure never rewrites this file. Its demo source is
# in generated/webhook-sources.yaml (rewritten at each start); a name used in both is an error.
# Add a real HRIS, e.g. BambooHR (docs/hris-adapters.md):
#
#   sources:
#     bamboo:
#       format: bamboohr
#       secrets_env: [BAMBOOHR_WEBHOOK_KEY]
#       api:
#         base_url: https://api.bamboohr.com/api/gateway.php/clinic/v1
#         token_env: BAMBOOHR_API_KEY
sources: {}
`

// Headers of the files tenure dev wrote over on every start before it kept them apart: such a
// file holds only generated content and is set aside, not merged.
var oldGeneratedHeaders = map[string]string{
	userConnectorsFile: "# Demo targets of `tenure dev`",
	userSourcesFile:    "# Webhook sources of tenure dev.",
}

func (d *Dev) writeConfig(targetURL string, log *slog.Logger) (map[string]string, error) {
	gen := filepath.Join(d.DataDir, generatedDir)
	if err := os.MkdirAll(gen, 0o700); err != nil {
		return nil, err
	}
	user := func(name string) string { return filepath.Join(d.DataDir, name) }
	files := map[string]string{
		"tokens":     filepath.Join(gen, "tokens.yaml"),
		"nats":       filepath.Join(gen, "nats.conf"),
		"policy":     user("policy.yaml"),
		"connectors": filepath.Join(gen, "connectors.yaml") + "," + user(userConnectorsFile),
		"sources":    filepath.Join(gen, "webhook-sources.yaml") + "," + user(userSourcesFile),
	}
	var tf authn.TokensFile
	for role, tok := range d.Secrets.Tokens {
		tf.Tokens = append(tf.Tokens, authn.TokenEntry{Name: "dev-" + role, Roles: []authn.Role{authn.Role(role)}, TokenSHA256: authn.HashToken(tok)})
	}
	tb, _ := yaml.Marshal(tf)
	sources := fmt.Sprintf("# tenure dev's demo webhook source, rewritten at each start (yours: ../%s).\nsources:\n  %s:\n    secrets: [%q]\n    tolerance: 5m\n",
		userSourcesFile, d.Secrets.WebhookSource, d.Secrets.WebhookSecret)
	for p, b := range map[string][]byte{
		files["tokens"]: append([]byte("# Bearer tokens of tenure dev, stored as SHA-256 (the tokens are in ../secrets.yaml).\n"), tb...),
		filepath.Join(gen, "webhook-sources.yaml"): []byte(sources),
		filepath.Join(gen, "connectors.yaml"):      demoConnectors(targetURL),
	} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return nil, err
		}
	}
	// The user's files: created when missing, never written otherwise.
	for name, tmpl := range map[string][]byte{userConnectorsFile: []byte(userConnectorsTemplate), userSourcesFile: []byte(userSourcesTemplate), "policy.yaml": demoPolicy} {
		p := user(name)
		b, err := os.ReadFile(p)
		if err == nil {
			hdr, old := oldGeneratedHeaders[name]
			if !old || !strings.HasPrefix(string(b), hdr) {
				continue
			}
			if err := os.Rename(p, p+".old"); err != nil {
				return nil, err
			}
			log.Info("set aside a file an earlier tenure dev generated; yours is now never rewritten", "file", p, "old", p+".old")
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if err := os.WriteFile(p, tmpl, 0o600); err != nil {
			return nil, err
		}
	}
	// tokens.yaml and the connectors/sources of earlier versions lived at the top.
	os.Remove(user("tokens.yaml"))
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
