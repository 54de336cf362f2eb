// Package pgtest gives tests a real PostgreSQL: one throwaway cluster per test binary and a
// fresh database per test.
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//	func TestX(t *testing.T)    { url := pgtest.NewDatabase(t) ... }
//
// Set TENURE_TEST_DATABASE_URL to a superuser URL to use an existing server instead.
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenure-dev/tenure/pkg/pgcluster"
)

var (
	adminURL string
	counter  atomic.Int64
)

// Main starts the cluster, runs the tests and stops the cluster. Use it from TestMain.
func Main(m *testing.M) int {
	url, stop, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	defer stop()
	adminURL = url
	return m.Run()
}

// Start starts a cluster for a test binary (or takes TENURE_TEST_DATABASE_URL) and returns a
// superuser URL and a stop function.
func Start() (string, func(), error) {
	if u := os.Getenv("TENURE_TEST_DATABASE_URL"); u != "" {
		return u, func() {}, nil
	}
	return startCluster(false)
}

// StartDurable starts a cluster of its own with fsync on, for a benchmark whose figure must
// include PostgreSQL's flush (Start's cluster runs with fsync off), and stops it when tb
// ends. It returns a superuser URL.
func StartDurable(tb testing.TB) string {
	tb.Helper()
	url, stop, err := startCluster(true)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return url
}

func startCluster(durable bool) (string, func(), error) {
	// Not a test's TempDir: when run as root the server runs as "postgres", which must reach it.
	dir, err := os.MkdirTemp("", "tenure-pgtest-")
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir, Durable: durable})
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return c.URL("postgres"), func() { c.Stop(); os.RemoveAll(dir) }, nil
}

// AdminURL is the superuser URL of the test cluster (the "postgres" database).
func AdminURL(t testing.TB) string {
	t.Helper()
	if adminURL == "" {
		t.Fatal("pgtest: the cluster is not running; call pgtest.Main from TestMain")
	}
	return adminURL
}

// NewDatabase creates an empty database for this test and returns a superuser URL to it.
// The database is dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	base := AdminURL(t)
	name := fmt.Sprintf("t_%d_%d", os.Getpid(), counter.Add(1))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), base)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return WithDatabase(base, name)
}

// WithDatabase returns the connection string pointing at another database; the rest of it
// (a Unix socket directory in ?host=, say) stays as it was.
func WithDatabase(dbURL, database string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	if u.Scheme == "" {
		// A keyword/value string ("host=... user=..."): a later keyword overrides.
		return dbURL + " dbname=" + database
	}
	u.Path, u.RawPath = "/"+database, ""
	return u.String()
}
