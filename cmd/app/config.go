// Package app wires tenure's services into one process: `tenure serve` runs the chosen
// targets against an external NATS and PostgreSQL; `tenure dev` runs all of them on the
// embedded default. Tests and benchmarks use it to run the real stack in-process.
package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tenure-dev/tenure/pkg/pgstore"
)

// Targets are the services `tenure serve --target` accepts ("all" means every one).
var Targets = []string{"intake", "approval", "provisioner", "ledger"}

// ServeConfig is everything `tenure serve` needs. Each field comes from, in order of
// precedence: a flag, an environment variable, the --config YAML file (same names in
// snake_case), the default.
type ServeConfig struct {
	Target       string `yaml:"target"`
	NATSURL      string `yaml:"nats_url"`
	NATSUser     string `yaml:"nats_user"`
	NATSPassword string `yaml:"nats_password"`
	NATSCAFile   string `yaml:"nats_ca_file"`
	// NATSAtomicBatch: outbox rounds of at least this many events are published as one
	// JetStream atomic batch, stored with one fsync (0: event by event). Worth it when
	// JetStream fsyncs every write (sync_interval: always); see docs/operations.md.
	NATSAtomicBatch int               `yaml:"nats_atomic_batch"`
	DatabaseURL     string            `yaml:"database_url"`
	DatabaseURLs    map[string]string `yaml:"database_urls"`
	HTTPAddr        string            `yaml:"http_addr"`
	GRPCAddr        string            `yaml:"grpc_addr"`
	TokensFile      string            `yaml:"tokens_file"`
	WebhookSources  string            `yaml:"webhook_sources"`
	Policy          string            `yaml:"policy"`
	Connectors      string            `yaml:"connectors"`
	StreamReplicas  int               `yaml:"stream_replicas"`
	EnsureStreams   bool              `yaml:"ensure_streams"`
	GRPCTLSCert     string            `yaml:"grpc_tls_cert"`
	GRPCTLSKey      string            `yaml:"grpc_tls_key"`
	OTLPEndpoint    string            `yaml:"otlp_endpoint"`
	LogFormat       string            `yaml:"log_format"`
	LogLevel        string            `yaml:"log_level"`
	ConnectTimeout  time.Duration     `yaml:"connect_timeout"`
	CaseDeadline    time.Duration     `yaml:"case_deadline"`
	// ApprovalTick is how often the approval service checks its stored deadlines (JIT and
	// break-glass expiry, re-approval windows, review deadlines); 0 means its default, 5s.
	ApprovalTick time.Duration `yaml:"approval_tick"`
	// LedgerKeyFile holds the ledger's Ed25519 checkpoint key (created if missing); every
	// ledger replica uses the same file.
	LedgerKeyFile string `yaml:"ledger_key_file"`
	// LedgerWriterRole is the database role the ledger runs as: it may only INSERT and
	// SELECT its entries; `tenure setup` migrates the schema as its owner.
	LedgerWriterRole string `yaml:"ledger_writer_role"`
	// LedgerWitnessDir, when set, also keeps every signed ledger checkpoint as a file there
	// (an append-only mount); see docs/ledger.md.
	LedgerWitnessDir string `yaml:"ledger_witness_dir"`
	// SSFIssuer is the public https URL of the ledger's OpenID Shared Signals transmitter
	// (default: http on the HTTP address, for local use).
	SSFIssuer string `yaml:"ssf_issuer"`
	// SSFKeyFile holds the RSA key that signs Security Event Tokens (created if missing;
	// default ssf.key beside the ledger key file).
	SSFKeyFile string `yaml:"ssf_key_file"`
	// SSFRetiredKeyFiles are earlier SSF signing keys, comma-separated: published in the JWKS,
	// never used to sign, so SETs signed before a key rotation still verify.
	SSFRetiredKeyFiles string `yaml:"ssf_retired_key_files"`
	// SSFTenant, when set, is sent as the tenant of complex subjects.
	SSFTenant string `yaml:"ssf_tenant"`
}

// option binds one setting to its flag and environment variable.
type option struct {
	flag, env, usage string
	str              *string
	num              *int
	boolean          *bool
	dur              *time.Duration
}

func (c *ServeConfig) options() []option {
	return []option{
		{flag: "target", env: "TENURE_TARGET", usage: "services to run: intake, approval, provisioner, ledger, a comma list, or all", str: &c.Target},
		{flag: "nats-url", env: "TENURE_NATS_URL", usage: "NATS server URL(s), comma-separated", str: &c.NATSURL},
		{flag: "nats-user", env: "TENURE_NATS_USER", usage: "NATS user (each service its own in production)", str: &c.NATSUser},
		{flag: "nats-password", env: "TENURE_NATS_PASSWORD", usage: "NATS password (prefer the environment variable)", str: &c.NATSPassword},
		{flag: "nats-ca-file", env: "TENURE_NATS_CA_FILE", usage: "CA certificate that signed the NATS server's TLS certificate", str: &c.NATSCAFile},
		{flag: "nats-atomic-batch", env: "TENURE_NATS_ATOMIC_BATCH", usage: "publish outbox rounds of at least this many events as one JetStream atomic batch (0: never; 32 with sync_interval: always)", num: &c.NATSAtomicBatch},
		{flag: "database-url", env: "TENURE_DATABASE_URL", usage: "PostgreSQL URL; TENURE_<SERVICE>_DATABASE_URL overrides it per service", str: &c.DatabaseURL},
		{flag: "http-addr", env: "TENURE_HTTP_ADDR", usage: "HTTP listen address (webhooks, /healthz, /readyz)", str: &c.HTTPAddr},
		{flag: "grpc-addr", env: "TENURE_GRPC_ADDR", usage: "gRPC listen address", str: &c.GRPCAddr},
		{flag: "tokens-file", env: "TENURE_TOKENS_FILE", usage: "YAML file of bearer tokens and their roles", str: &c.TokensFile},
		{flag: "webhook-sources", env: "TENURE_WEBHOOK_SOURCES", usage: "YAML file(s) of webhook sources and secrets (intake); a comma list is merged, a source named twice is an error", str: &c.WebhookSources},
		{flag: "policy", env: "TENURE_POLICY", usage: "policy YAML file (approval)", str: &c.Policy},
		{flag: "connectors", env: "TENURE_CONNECTORS", usage: "connectors YAML file(s) (provisioner); a comma list is merged, a connector named twice is an error", str: &c.Connectors},
		{flag: "stream-replicas", env: "TENURE_STREAM_REPLICAS", usage: "JetStream replicas (3 in production)", num: &c.StreamReplicas},
		{flag: "ensure-streams", env: "TENURE_ENSURE_STREAMS", usage: "create the streams if missing (needs a NATS user that may)", boolean: &c.EnsureStreams},
		{flag: "grpc-tls-cert", env: "TENURE_GRPC_TLS_CERT", usage: "gRPC TLS certificate file", str: &c.GRPCTLSCert},
		{flag: "grpc-tls-key", env: "TENURE_GRPC_TLS_KEY", usage: "gRPC TLS key file", str: &c.GRPCTLSKey},
		{flag: "otlp-endpoint", env: "OTEL_EXPORTER_OTLP_ENDPOINT", usage: "OTLP/HTTP endpoint for traces", str: &c.OTLPEndpoint},
		{flag: "log-format", env: "TENURE_LOG_FORMAT", usage: "text or json", str: &c.LogFormat},
		{flag: "log-level", env: "TENURE_LOG_LEVEL", usage: "debug, info, warn, error", str: &c.LogLevel},
		{flag: "connect-timeout", env: "TENURE_CONNECT_TIMEOUT", usage: "how long to wait for NATS and PostgreSQL at start", dur: &c.ConnectTimeout},
		{flag: "ledger-key-file", env: "TENURE_LEDGER_KEY_FILE", usage: "ledger checkpoint signing key (Ed25519, PEM; created if missing)", str: &c.LedgerKeyFile},
		{flag: "ledger-witness-dir", env: "TENURE_LEDGER_WITNESS_DIR", usage: "directory (append-only mount) that also keeps every signed ledger checkpoint", str: &c.LedgerWitnessDir},
		{flag: "ledger-writer-role", env: "TENURE_LEDGER_WRITER_ROLE", usage: "database role the ledger runs as (INSERT/SELECT only; schema migrated by `tenure setup`)", str: &c.LedgerWriterRole},
		{flag: "ssf-issuer", env: "TENURE_SSF_ISSUER", usage: "public https URL of the Shared Signals transmitter (ledger); default http on --http-addr", str: &c.SSFIssuer},
		{flag: "ssf-key-file", env: "TENURE_SSF_KEY_FILE", usage: "RSA key that signs Security Event Tokens (PEM; created if missing; default ssf.key beside the ledger key)", str: &c.SSFKeyFile},
		{flag: "ssf-retired-key-files", env: "TENURE_SSF_RETIRED_KEY_FILES", usage: "earlier SSF signing keys, comma-separated: still published in the JWKS after a rotation, never used to sign", str: &c.SSFRetiredKeyFiles},
		{flag: "ssf-tenant", env: "TENURE_SSF_TENANT", usage: "tenant id sent in complex SSF subjects (optional)", str: &c.SSFTenant},
		{flag: "case-deadline", env: "TENURE_CASE_DEADLINE", usage: "leaver case deadline before an overdue alert", dur: &c.CaseDeadline},
		{flag: "approval-tick", env: "TENURE_APPROVAL_TICK", usage: "how often the approval service checks JIT/break-glass expiry and other deadlines (default 5s)", dur: &c.ApprovalTick},
	}
}

func defaultServeConfig() ServeConfig {
	return ServeConfig{
		NATSURL: "nats://127.0.0.1:4222", HTTPAddr: ":8080", GRPCAddr: ":9090", StreamReplicas: 1,
		LogFormat: "text", LogLevel: "info", ConnectTimeout: 10 * time.Second, CaseDeadline: 5 * time.Minute,
		LedgerWriterRole: "tenure_ledger",
	}
}

// ParseServe reads `tenure serve` arguments, the environment (getenv) and the config file.
func ParseServe(args []string, getenv func(string) string, stderr io.Writer) (*ServeConfig, error) {
	c := defaultServeConfig()
	fs := flag.NewFlagSet("tenure serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", getenv("TENURE_CONFIG"), "YAML config file (env TENURE_CONFIG)")
	// Flags write into a scratch copy; they are applied last, over file and environment.
	var fromFlags ServeConfig
	opts := fromFlags.options()
	for _, o := range opts {
		usage := fmt.Sprintf("%s (env %s)", o.usage, o.env)
		switch {
		case o.str != nil:
			fs.StringVar(o.str, o.flag, "", usage)
		case o.num != nil:
			fs.IntVar(o.num, o.flag, 0, usage)
		case o.boolean != nil:
			fs.BoolVar(o.boolean, o.flag, false, usage)
		case o.dur != nil:
			fs.DurationVar(o.dur, o.flag, 0, usage)
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *configFile != "" {
		b, err := os.ReadFile(*configFile)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config %s: %w", *configFile, err)
		}
	}
	for _, o := range c.options() {
		v := getenv(o.env)
		if v == "" {
			continue
		}
		if err := o.set(v); err != nil {
			return nil, fmt.Errorf("environment %s: %w", o.env, err)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for i, o := range c.options() {
		if !set[o.flag] {
			continue
		}
		if err := o.set(fs.Lookup(opts[i].flag).Value.String()); err != nil {
			return nil, fmt.Errorf("--%s: %w", o.flag, err)
		}
	}
	for _, svc := range Targets {
		if v := getenv("TENURE_" + strings.ToUpper(svc) + "_DATABASE_URL"); v != "" {
			if c.DatabaseURLs == nil {
				c.DatabaseURLs = map[string]string{}
			}
			c.DatabaseURLs[svc] = v
		}
	}
	if _, err := c.Services(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (o option) set(v string) error {
	switch {
	case o.str != nil:
		*o.str = v
	case o.num != nil:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not a number", v)
		}
		*o.num = n
	case o.boolean != nil:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*o.boolean = b
	case o.dur != nil:
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 30s", v)
		}
		*o.dur = d
	}
	return nil
}

// Services returns the services the target names.
func (c *ServeConfig) Services() ([]string, error) {
	if c.Target == "" {
		return nil, errors.New("--target is required: intake, approval, provisioner, ledger, a comma list, or all")
	}
	if c.Target == "all" {
		return slices.Clone(Targets), nil
	}
	var out []string
	for _, t := range strings.Split(c.Target, ",") {
		t = strings.TrimSpace(t)
		if !slices.Contains(Targets, t) {
			return nil, fmt.Errorf("unknown target %q (known: %s, all)", t, strings.Join(Targets, ", "))
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// Validate checks that what the chosen services need is configured.
func (c *ServeConfig) Validate() error {
	svcs, err := c.Services()
	if err != nil {
		return err
	}
	var probs []string
	for _, s := range svcs {
		if c.databaseURL(s) == "" {
			probs = append(probs, fmt.Sprintf("%s needs a database: --database-url or TENURE_%s_DATABASE_URL", s, strings.ToUpper(s)))
		}
	}
	if c.NATSURL == "" {
		probs = append(probs, "--nats-url is required")
	}
	if c.NATSAtomicBatch < 0 || c.NATSAtomicBatch > pgstore.MaxRound {
		probs = append(probs, fmt.Sprintf("--nats-atomic-batch %d: want 0 (never) up to %d (the most events one outbox round publishes)", c.NATSAtomicBatch, pgstore.MaxRound))
	}
	if c.ApprovalTick < 0 {
		probs = append(probs, fmt.Sprintf("--approval-tick %s: want a positive duration (0: the default, 5s)", c.ApprovalTick))
	}
	if c.TokensFile == "" {
		probs = append(probs, "--tokens-file is required: gRPC calls are authenticated")
	}
	if slices.Contains(svcs, "approval") && c.Policy == "" {
		probs = append(probs, "approval needs --policy")
	}
	if slices.Contains(svcs, "provisioner") && c.Connectors == "" {
		probs = append(probs, "provisioner needs --connectors")
	}
	if slices.Contains(svcs, "ledger") && c.LedgerKeyFile == "" {
		probs = append(probs, "ledger needs --ledger-key-file (its checkpoint signing key)")
	}
	if slices.Contains(svcs, "intake") && c.WebhookSources == "" {
		probs = append(probs, "intake needs --webhook-sources")
	}
	if (c.GRPCTLSCert == "") != (c.GRPCTLSKey == "") {
		probs = append(probs, "--grpc-tls-cert and --grpc-tls-key go together")
	}
	if len(probs) > 0 {
		return errors.New(strings.Join(probs, "; "))
	}
	return nil
}

func (c *ServeConfig) databaseURL(svc string) string {
	if u := c.DatabaseURLs[svc]; u != "" {
		return u
	}
	return c.DatabaseURL
}
