package pgstore

import (
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var baseMigrations embed.FS

// Migrate applies the shared migrations (inbox, outbox) and then the service's own *.sql
// files from dir in fsys, in name order, each in its own transaction, into schema. It creates
// the schema when it is missing and the role may. A lock keeps concurrent starts apart.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema string, fsys fs.FS, dir string) error {
	if !identRE.MatchString(schema) {
		return fmt.Errorf("pgstore: invalid schema name %q", schema)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: migrate %s: %w", schema, err)
	}
	defer conn.Release()
	h := fnv.New64a()
	h.Write([]byte("tenure-migrate:" + schema))
	lock := int64(h.Sum64())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lock); err != nil {
		return fmt.Errorf("pgstore: migrate %s: lock: %w", schema, err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lock)

	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("pgstore: create schema %s (run `tenure setup` as a database admin first?): %w", schema, err)
		}
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.schema_migrations (
		name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`, pgx.Identifier{schema}.Sanitize())); err != nil {
		return fmt.Errorf("pgstore: migrate %s: %w", schema, err)
	}
	type migration struct {
		name string
		fsys fs.FS
		file string
	}
	var all []migration
	add := func(prefix string, fsys fs.FS, dir string) error {
		names, err := fs.Glob(fsys, path.Join(dir, "*.sql"))
		if err != nil {
			return err
		}
		sort.Strings(names)
		for _, n := range names {
			all = append(all, migration{name: prefix + path.Base(n), fsys: fsys, file: n})
		}
		return nil
	}
	if err := add("pgstore/", baseMigrations, "migrations"); err != nil {
		return err
	}
	if fsys != nil {
		if err := add(schema+"/", fsys, dir); err != nil {
			return err
		}
	}
	for _, m := range all {
		var done bool
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s.schema_migrations WHERE name = $1)", pgx.Identifier{schema}.Sanitize()), m.name).Scan(&done); err != nil {
			return err
		}
		if done {
			continue
		}
		sql, err := fs.ReadFile(m.fsys, m.file)
		if err != nil {
			return err
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+pgx.Identifier{schema}.Sanitize()); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (name) VALUES ($1)", m.name)
			return err
		})
		if err != nil {
			return fmt.Errorf("pgstore: migration %s: %w", m.name, err)
		}
	}
	return nil
}

// Applied lists the applied migrations of schema, in order.
func Applied(ctx context.Context, pool *pgxpool.Pool, schema string) ([]string, error) {
	rows, err := pool.Query(ctx, fmt.Sprintf("SELECT name FROM %s.schema_migrations ORDER BY applied_at, name", pgx.Identifier{schema}.Sanitize()))
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return names, err
}
