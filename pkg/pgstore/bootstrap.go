package pgstore

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
)

// RoleName is the database role of a service: "tenure_<schema>".
func RoleName(schema string) string { return "tenure_" + schema }

// Bootstrap creates, as a database admin, one login role per service and a schema owned by
// it, so each service can reach its own schema only. Passwords are optional (trust or peer
// auth in dev). It is idempotent; `tenure setup` and `tenure dev` run it.
func Bootstrap(ctx context.Context, adminURL string, schemas []string, passwords map[string]string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("pgstore: bootstrap: connect as admin: %w", err)
	}
	defer conn.Close(ctx)
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return err
	}
	// Nobody but the admin creates objects in public or the database.
	stmts := []string{
		"REVOKE CREATE ON SCHEMA public FROM PUBLIC",
		"REVOKE ALL ON DATABASE " + pgx.Identifier{db}.Sanitize() + " FROM PUBLIC",
	}
	for _, s := range schemas {
		if !identRE.MatchString(s) {
			return fmt.Errorf("pgstore: invalid schema name %q", s)
		}
		role := pgx.Identifier{RoleName(s)}.Sanitize()
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", RoleName(s)).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			stmts = append(stmts, "CREATE ROLE "+role+" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
		}
		if pw := passwords[s]; pw != "" {
			// Quote the literal ourselves: utility statements take no parameters.
			stmts = append(stmts, "ALTER ROLE "+role+" PASSWORD "+quoteLiteral(pw))
		}
		stmts = append(stmts,
			"GRANT CONNECT, TEMPORARY ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+role,
			"CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{s}.Sanitize()+" AUTHORIZATION "+role,
			"ALTER SCHEMA "+pgx.Identifier{s}.Sanitize()+" OWNER TO "+role,
		)
	}
	for _, st := range stmts {
		if _, err := conn.Exec(ctx, st); err != nil {
			return fmt.Errorf("pgstore: bootstrap: %s: %w", firstWords(st), err)
		}
	}
	return nil
}

// ServiceURL returns adminURL with the user (and password) of a service's role.
func ServiceURL(adminURL, schema, password string) (string, error) {
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", fmt.Errorf("pgstore: parse database URL: %w", redact(err))
	}
	if password != "" {
		u.User = url.UserPassword(RoleName(schema), password)
	} else {
		u.User = url.User(RoleName(schema))
	}
	return u.String(), nil
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}

// firstWords names a statement in errors without its password literal.
func firstWords(s string) string {
	n := 0
	for i, c := range s {
		if c == ' ' {
			n++
			if n == 3 {
				return s[:i]
			}
		}
	}
	return s
}

// OwnerRoleName is the role that owns a schema whose login role must not: "tenure_<schema>_owner".
func OwnerRoleName(schema string) string { return "tenure_" + schema + "_owner" }

// BootstrapSplit prepares a schema whose login role may not own it (the ledger: its role
// may only INSERT and SELECT, so it can never drop its own append-only triggers). The schema
// is owned by a NOLOGIN role, tenure_<schema>_owner, that the admin may act as; the login
// role tenure_<schema> gets its rights from the service's setup, run as that owner. Objects
// an earlier bootstrap gave the login role are handed to the owner.
func BootstrapSplit(ctx context.Context, adminURL, schema, password string) error {
	if !identRE.MatchString(schema) {
		return fmt.Errorf("pgstore: invalid schema name %q", schema)
	}
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("pgstore: bootstrap: connect as admin: %w", err)
	}
	defer conn.Close(ctx)
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return err
	}
	login, owner := pgx.Identifier{RoleName(schema)}.Sanitize(), pgx.Identifier{OwnerRoleName(schema)}.Sanitize()
	var stmts []string
	for _, r := range []struct{ name, create string }{
		{RoleName(schema), "CREATE ROLE " + login + " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"},
		{OwnerRoleName(schema), "CREATE ROLE " + owner + " NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"},
	} {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", r.name).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			stmts = append(stmts, r.create)
		}
	}
	if password != "" {
		stmts = append(stmts, "ALTER ROLE "+login+" PASSWORD "+quoteLiteral(password))
	}
	sc := pgx.Identifier{schema}.Sanitize()
	stmts = append(stmts,
		// The admin acts as the owner to migrate (a superuser could anyway; a managed-cloud
		// admin needs the membership).
		"GRANT "+owner+" TO CURRENT_USER",
		"GRANT CONNECT, TEMPORARY ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+login,
		"CREATE SCHEMA IF NOT EXISTS "+sc+" AUTHORIZATION "+owner,
		"ALTER SCHEMA "+sc+" OWNER TO "+owner,
		"REASSIGN OWNED BY "+login+" TO "+owner,
	)
	for _, st := range stmts {
		if _, err := conn.Exec(ctx, st); err != nil {
			return fmt.Errorf("pgstore: bootstrap: %s: %w", firstWords(st), err)
		}
	}
	return nil
}

// AsRole returns url with a connection option that makes each session act as role (SET ROLE),
// so objects it creates belong to that role.
func AsRole(dbURL, role string) string {
	sep := "?"
	if strings.Contains(dbURL, "?") {
		sep = "&"
	}
	return dbURL + sep + "options=" + strings.ReplaceAll(url.QueryEscape("-c role="+role), "+", "%20")
}
