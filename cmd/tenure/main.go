// Command tenure runs tenure's services: `tenure serve --target=...` against an external
// NATS and PostgreSQL, `tenure dev` on the embedded default, `tenure setup` to create the
// streams, roles and schemas, and `tenure healthcheck` for container health probes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/cmd/app"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/telemetry"
	"github.com/tenure-dev/tenure/services/ledger"
)

const usage = `tenure: HR lifecycle events to provable workforce access.

Usage:
  tenure dev [flags]            run everything on the embedded default (NATS + PostgreSQL)
  tenure serve --target=T       run services against an external NATS and PostgreSQL
                                (T: intake, approval, provisioner, ledger, a comma list, or all)
  tenure setup                  create JetStream streams and per-service database roles
  tenure healthcheck --url U    exit 0 when U answers 200 (container health checks)
  tenure ledger-prune --archive DIR --pubkey F --database-url ADMIN
                                delete ledger entries past retention that a verified archive holds
  tenure version

Run 'tenure <command> -h' for the flags of a command.
`

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := realMain(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tenure:", err)
		}
		os.Exit(1)
	}
}

func realMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "dev":
		return dev(ctx, args[1:], stdout, stderr)
	case "setup":
		return setup(ctx, args[1:], stdout, stderr)
	case "healthcheck":
		return healthcheck(args[1:], stderr)
	case "ledger-prune":
		return ledgerPrune(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "tenure", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(telemetry.NewLogHandler(h))
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := app.ParseServe(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	slog.SetDefault(log)
	if cfg.OTLPEndpoint != "" {
		os.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", cfg.OTLPEndpoint)
	}
	shutdown, err := telemetry.Setup(ctx, "tenure-"+strings.ReplaceAll(cfg.Target, ",", "+"))
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer shutdown(context.Background())
	st, err := app.Start(ctx, cfg, app.Options{Log: log})
	if err != nil {
		return err
	}
	err = st.Wait()
	log.Info("tenure stopped")
	return err
}

func dev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tenure dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o app.DevOptions
	fs.StringVar(&o.DataDir, "data-dir", ".tenure/dev", "directory for NATS, PostgreSQL, secrets and generated config")
	fs.StringVar(&o.DatabaseURL, "database-url", os.Getenv("TENURE_DEV_DATABASE_URL"), "superuser URL of an existing PostgreSQL instead of starting one")
	fs.StringVar(&o.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address")
	fs.StringVar(&o.GRPCAddr, "grpc-addr", "127.0.0.1:9090", "gRPC listen address")
	fs.IntVar(&o.NATSPort, "nats-port", 4222, "embedded NATS port (-1: any free port)")
	fs.DurationVar(&o.NATSSyncInterval, "nats-sync-interval", 0, "JetStream fsync interval (0: fsync every write)")
	fs.DurationVar(&o.CaseDeadline, "case-deadline", 5*time.Minute, "leaver case deadline before an overdue alert")
	fs.BoolVar(&o.Fast, "fast", false, "run PostgreSQL without fsync (tests and benchmarks only: a machine crash can lose committed data)")
	logFormat := fs.String("log-format", "text", "text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := newLogger(stderr, *logFormat, *logLevel)
	slog.SetDefault(log)
	shutdown, err := telemetry.Setup(ctx, "tenure-dev")
	if err != nil {
		return err
	}
	defer shutdown(context.Background())
	o.Log = log
	d, err := app.StartDev(ctx, o)
	if err != nil {
		return err
	}
	d.PrintEndpoints(stdout)
	<-ctx.Done()
	log.Info("shutting down")
	err = d.Stack.Wait()
	if serr := d.Stop(); serr != nil {
		return errors.Join(err, fmt.Errorf("stop PostgreSQL: %w", serr))
	}
	log.Info("stopped")
	return err
}

func setup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tenure setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", env("TENURE_NATS_URL", "nats://127.0.0.1:4222"), "NATS URL (env TENURE_NATS_URL)")
	natsUser := fs.String("nats-user", os.Getenv("TENURE_NATS_USER"), "NATS admin user (env TENURE_NATS_USER)")
	natsPassword := fs.String("nats-password", os.Getenv("TENURE_NATS_PASSWORD"), "NATS admin password (env TENURE_NATS_PASSWORD)")
	dbURL := fs.String("database-url", os.Getenv("TENURE_DATABASE_URL"), "PostgreSQL admin URL of the tenure database (env TENURE_DATABASE_URL)")
	targetRole := fs.Bool("target-role", false, "also create tenure_target for the demo PostgreSQL-roles connectors (implied by TENURE_DB_PASSWORD_TARGET)")
	replicas := fs.Int("stream-replicas", envInt("TENURE_STREAM_REPLICAS", 1), "JetStream replicas (env TENURE_STREAM_REPLICAS)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	opts := []nats.Option{nats.Name("tenure-setup"), nats.Timeout(10 * time.Second)}
	if *natsUser != "" {
		opts = append(opts, nats.UserInfo(*natsUser, *natsPassword), nats.CustomInboxPrefix("_INBOX_"+*natsUser))
	}
	nc, err := nats.Connect(*natsURL, opts...)
	if err != nil {
		return fmt.Errorf("NATS at %s unreachable: %w", *natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	so := natsx.DefaultStreamOptions()
	so.Replicas = *replicas
	if err := natsx.EnsureStreams(cctx, js, so); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "streams %s and %s ready (replicas %d)\n", natsx.EventsStream, natsx.DLQStream, *replicas)
	if *dbURL == "" {
		return errors.New("--database-url (an admin URL) is required to create the service roles")
	}
	pw := map[string]string{}
	for _, svc := range app.Targets {
		pw[svc] = os.Getenv("TENURE_DB_PASSWORD_" + strings.ToUpper(svc))
	}
	if err := app.SetupDatabase(cctx, *dbURL, pw); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "database roles %s ready, each confined to its schema; ledger migrated as %s\n",
		strings.Join(roleNames(), ", "), pgstore.OwnerRoleName("ledger"))
	if pw := os.Getenv("TENURE_DB_PASSWORD_TARGET"); pw != "" || *targetRole {
		// The demo targets' role (PostgreSQL roles as accounts): CREATEROLE, nothing more.
		if _, err := app.EnsureTargetRole(cctx, *dbURL, pw); err != nil {
			return fmt.Errorf("demo target role: %w", err)
		}
		fmt.Fprintln(stdout, "database role tenure_target ready (demo connectors)")
	}
	return nil
}

// ledgerPrune deletes archived ledger entries older than the retention period. It needs the
// schema owner's rights (the ledger's own role cannot delete), so it runs here, not over gRPC.
func ledgerPrune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tenure ledger-prune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dbURL := fs.String("database-url", os.Getenv("TENURE_DATABASE_URL"), "PostgreSQL admin URL of the tenure database (env TENURE_DATABASE_URL)")
	archive := fs.String("archive", "", "archive directory written by `tenurectl ledger archive`")
	pubFile := fs.String("pubkey", "", "the ledger's public key (PEM, from `tenurectl ledger pubkey`)")
	retention := fs.Duration("retention", ledger.DefaultRetention, "keep entries younger than this (HIPAA: 6 years)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dbURL == "" || *archive == "" || *pubFile == "" {
		return errors.New("--database-url, --archive and --pubkey are required")
	}
	pem, err := os.ReadFile(*pubFile)
	if err != nil {
		return err
	}
	pub, err := ledger.ParsePublicKeyPEM(pem)
	if err != nil {
		return fmt.Errorf("%s: %w", *pubFile, err)
	}
	owner, err := pgstore.Connect(ctx, pgstore.AsRole(*dbURL, pgstore.OwnerRoleName("ledger")), "ledger")
	if err != nil {
		return err
	}
	defer owner.Close()
	n, err := ledger.Prune(ctx, owner, *archive, pub, *retention)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pruned %d ledger entries held by the verified archive %s\n", n, *archive)
	return nil
}

func roleNames() []string {
	var out []string
	for _, s := range app.Targets {
		out = append(out, pgstore.RoleName(s))
	}
	return out
}

func healthcheck(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("tenure healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	u := fs.String("url", "http://127.0.0.1:8080/readyz", "URL that must answer 200")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(*u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s %s", *u, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envInt(k string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(k), &n); err == nil {
		return n
	}
	return def
}
