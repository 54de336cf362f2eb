package pgcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestStartQueryStopRestart(t *testing.T) {
	dir, err := os.MkdirTemp("", "pgcluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		c.Stop()
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); !os.IsNotExist(err) {
		t.Fatalf("postmaster.pid still present after Stop: %v", err)
	}

	// A second start reuses the data directory.
	c2, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Stop()
	conn, err = pgx.Connect(ctx, c2.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 42 {
		t.Fatalf("data not kept across restart: v=%d err=%v", v, err)
	}
}

// URL goes through the Unix socket in the cluster's directory, and the loopback port still
// answers for tools that only speak TCP. A directory whose path cannot hold a socket address
// (or holds a character a URL would need escaped) gets a TCP URL instead.
func TestURLUsesTheSocketWhereItFits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	short, err := os.MkdirTemp("", "pgcluster-sock-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(short)
	long := filepath.Join(short, strings.Repeat("d", 100))
	for _, tc := range []struct {
		dir    string
		socket bool
	}{{short, true}, {long, false}, {filepath.Join(short, "a&b"), false}} {
		c, err := Start(ctx, Options{Dir: tc.dir})
		if err != nil {
			t.Fatal(err)
		}
		// inet_client_addr() is NULL for a Unix-socket session.
		overSocket := func(url string) bool {
			t.Helper()
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				c.Stop()
				t.Fatalf("connect %s: %v", url, err)
			}
			defer conn.Close(ctx)
			var local bool
			if err := conn.QueryRow(ctx, "SELECT inet_client_addr() IS NULL").Scan(&local); err != nil {
				t.Fatal(err)
			}
			return local
		}
		if got := overSocket(c.URL("postgres")); got != tc.socket {
			t.Errorf("dir of %d bytes: URL %s over the socket = %v, want %v", len(tc.dir), c.URL("postgres"), got, tc.socket)
		}
		if overSocket(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port())) {
			t.Error("the loopback port answered over the socket")
		}
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}
