package ssf_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
)

// TestWriterRoleGetsWorkingStateOnly: the run-time role reads and writes the transmitter's
// tables, and nothing more: no DDL in schema ssf, no dropping or altering its tables.
func TestWriterRoleGetsWorkingStateOnly(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	admin, err := pgstore.Connect(ctx, url, "public")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close) // after the cleanup below, which needs it
	cfg, _ := pgx.ParseConfig(url)
	for _, q := range []string{
		"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ssf_test_owner') THEN CREATE ROLE ssf_test_owner NOLOGIN; END IF; END $$",
		"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ssf_test_writer') THEN CREATE ROLE ssf_test_writer LOGIN; END IF; END $$",
		"CREATE SCHEMA ssf AUTHORIZATION ssf_test_owner",
		"GRANT CONNECT ON DATABASE " + pgx.Identifier{cfg.Database}.Sanitize() + " TO ssf_test_writer",
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		admin.Exec(context.Background(), "DROP OWNED BY ssf_test_owner CASCADE; DROP OWNED BY ssf_test_writer CASCADE")
	})
	owner, err := pgstore.Connect(ctx, pgstore.AsRole(url, "ssf_test_owner"), "ssf")
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	writer, err := pgstore.Connect(ctx, strings.Replace(url, "postgres://postgres@", "postgres://ssf_test_writer@", 1), "ssf")
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()

	base := ssf.Config{Issuer: "https://tenure.example.org", KeyFile: t.TempDir() + "/ssf.key", WriterRole: "ssf_test_writer"}
	if _, err := ssf.New(ctx, base, ssf.Deps{Pool: writer, Auth: tokens(t)}); err == nil || !strings.Contains(err.Error(), "tenure setup") {
		t.Fatalf("New before setup: %v, want an error naming `tenure setup`", err)
	}
	if _, err := ssf.New(ctx, base, ssf.Deps{Pool: writer, AdminPool: owner, Auth: tokens(t)}); err != nil {
		t.Fatal(err)
	}
	if _, err := ssf.New(ctx, base, ssf.Deps{Pool: writer, Auth: tokens(t)}); err != nil {
		t.Fatalf("New after setup: %v", err)
	}
	for _, q := range []string{
		"INSERT INTO ssf.streams (stream_id, owner, aud, method) VALUES ('s1', 'siem', '{siem}', 'urn:ietf:rfc:8936')",
		"INSERT INTO ssf.sets (stream_id, jti, event_type, token) VALUES ('s1', 'j1', 'e', 't')",
		"UPDATE ssf.sets SET delivered_at = now()",
		"DELETE FROM ssf.sets",
		"DELETE FROM ssf.streams",
	} {
		if _, err := writer.Exec(ctx, q); err != nil {
			t.Errorf("writer: %s: %v", q, err)
		}
	}
	for _, q := range []string{
		"DROP TABLE ssf.sets",
		"ALTER TABLE ssf.streams ADD COLUMN x int",
		"CREATE TABLE ssf.other (x int)",
		"TRUNCATE ssf.sets",
		"DELETE FROM ssf.schema_migrations",
	} {
		if _, err := writer.Exec(ctx, q); err == nil {
			t.Errorf("writer may %s", q)
		}
	}
}
