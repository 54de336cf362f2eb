package pgtest

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

// WithDatabase changes only the database, in a URL (keeping a socket host in the query) and
// in a keyword/value string alike.
func TestWithDatabaseKeepsTheRest(t *testing.T) {
	for _, in := range []string{
		"postgres://postgres@/postgres?host=/tmp/pg&port=5433&sslmode=disable",
		"postgres://postgres:pw@127.0.0.1:5433/postgres?sslmode=disable",
		"host=/tmp/pg port=5433 user=postgres dbname=postgres sslmode=disable",
	} {
		want, err := pgx.ParseConfig(in)
		if err != nil {
			t.Fatal(err)
		}
		out := WithDatabase(in, "t_1")
		got, err := pgx.ParseConfig(out)
		if err != nil {
			t.Fatalf("WithDatabase(%q) = %q: %v", in, out, err)
		}
		if got.Database != "t_1" || got.Host != want.Host || got.Port != want.Port || got.User != want.User || got.Password != want.Password {
			t.Errorf("WithDatabase(%q) = %q: database %q host %q port %d user %q", in, out, got.Database, got.Host, got.Port, got.User)
		}
	}
}
