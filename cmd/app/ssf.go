package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
)

// startSSF builds the OpenID Shared Signals transmitter that runs with the ledger, on the
// ledger's database role (its own schema ssf and grant), and mounts its endpoints on mux.
// httpAddr is the bound HTTP address, the issuer's default.
func startSSF(ctx context.Context, cfg *ServeConfig, pool *pgxpool.Pool, js jetstream.JetStream, auth *authn.Authenticator, log *slog.Logger, httpAddr string, mux *http.ServeMux) (*ssf.Transmitter, error) {
	issuer := cfg.SSFIssuer
	if issuer == "" {
		host, port, err := net.SplitHostPort(httpAddr)
		if err != nil {
			return nil, fmt.Errorf("SSF issuer from %s: %w", httpAddr, err)
		}
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
		}
		issuer = "http://" + net.JoinHostPort(host, port)
		log.Warn("SSF issuer not set: using a local http URL; set --ssf-issuer to the public https URL for receivers elsewhere", "issuer", issuer)
	}
	u, err := url.Parse(issuer)
	if err != nil {
		return nil, fmt.Errorf("--ssf-issuer: %w", err)
	}
	keyFile := cfg.SSFKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(filepath.Dir(cfg.LedgerKeyFile), "ssf.key")
	}
	var retired []string
	for _, f := range strings.Split(cfg.SSFRetiredKeyFiles, ",") {
		if f = strings.TrimSpace(f); f != "" {
			retired = append(retired, f)
		}
	}
	t, err := ssf.New(ctx, ssf.Config{
		Issuer: issuer, KeyFile: keyFile, RetiredKeyFiles: retired, Tenant: cfg.SSFTenant, WriterRole: cfg.LedgerWriterRole,
		// An http issuer is a deliberate local set-up: push endpoints may be http there too.
		AllowHTTP: u.Scheme == "http",
	}, ssf.Deps{Pool: pool, JS: js, Auth: auth, Log: log})
	if err != nil {
		return nil, err
	}
	// The endpoints sit below the issuer's path, if it has one (SSF 1.0 §7.2 for discovery).
	h, prefix := t.Handler(), strings.TrimSuffix(u.Path, "/")
	mux.Handle("/.well-known/ssf-configuration"+prefix, h)
	mux.Handle(prefix+"/ssf/", h)
	return t, nil
}

// setupSSFDatabase gives the SSF transmitter its own schema, owned like the ledger's by
// tenure_ledger_owner, and grants the ledger's run-time role read and write on it: the
// transmitter's streams and pending SETs are working state, unlike the append-only entries.
func setupSSFDatabase(ctx context.Context, adminURL string, owner *pgxpool.Pool) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("ssf: connect as admin: %w", err)
	}
	defer conn.Close(ctx)
	own := pgx.Identifier{pgstore.OwnerRoleName("ledger")}.Sanitize()
	for _, q := range []string{"CREATE SCHEMA IF NOT EXISTS ssf AUTHORIZATION " + own, "ALTER SCHEMA ssf OWNER TO " + own} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("ssf: %s: %w", q, err)
		}
	}
	return ssf.Setup(ctx, owner, pgstore.RoleName("ledger"))
}
