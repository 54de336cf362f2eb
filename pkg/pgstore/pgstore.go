// Package pgstore is tenure's PostgreSQL layer: a pgx pool bound to one service's schema,
// embedded per-service migrations, the inbox that makes consumers effectively-once, and the
// transactional outbox with the relay that publishes it to JetStream.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Connect opens a pool whose connections use schema as their search_path, and checks that the
// database answers. Errors say what failed without echoing the password.
func Connect(ctx context.Context, url, schema string) (*pgxpool.Pool, error) {
	if !identRE.MatchString(schema) {
		return nil, fmt.Errorf("pgstore: invalid schema name %q", schema)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("pgstore: parse database URL: %w", redact(err))
	}
	if !strings.Contains(url, "pool_max_conns") {
		// pgxpool's default (4 on 2 cores) starves consumers that handle messages concurrently;
		// 16 per service stays well inside PostgreSQL's default max_connections of 100.
		cfg.MaxConns = 16
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.ConnConfig.RuntimeParams["application_name"] = "tenure-" + schema
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: open pool: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: database %s:%d/%s as %s unreachable: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, cfg.ConnConfig.User, err)
	}
	return pool, nil
}

// redact drops anything after "://" in parse errors, which may quote the URL with its password.
func redact(err error) error {
	return errors.New(regexp.MustCompile(`[a-z]+://\S+`).ReplaceAllString(err.Error(), "<database URL>"))
}

// InTx runs fn in a transaction and commits it, or rolls back if fn fails.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, fn)
}
