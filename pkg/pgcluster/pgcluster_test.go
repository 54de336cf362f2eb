package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

// A server whose owner died (its lock gone, the server still running) is stopped by the next
// Start, which then owns the directory; a directory a live owner holds is refused.
func TestStartTakesOverAnOrphanedServer(t *testing.T) {
	dir, err := os.MkdirTemp("", "pgcluster-orphan-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	if _, err := Start(ctx, Options{Dir: dir}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Start while the first owner lives: %v, want ErrInUse", err)
	}
	pidFile, _ := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	orphan, _ := strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0])

	first.lock.Close() // what the kernel does when the owner is killed
	second, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatalf("Start over an orphaned server: %v", err)
	}
	defer second.Stop()
	if second.TookOver != orphan || orphan == 0 {
		t.Fatalf("TookOver = %d, want the orphan's pid %d", second.TookOver, orphan)
	}
	// pg_ctl stop returns once the pid file is gone, a moment before the process exits.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := syscall.Kill(orphan, 0); errors.Is(err, syscall.ESRCH) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the orphaned server (pid %d) still runs: %v", orphan, err)
		}
	}
	conn, err := pgx.Connect(ctx, second.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
}

// Durable keeps fsync on; without it the cluster runs fast and unsafe.
func TestDurableKeepsFsyncOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, durable := range []bool{true, false} {
		dir, err := os.MkdirTemp("", "pgcluster-fsync-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		c, err := Start(ctx, Options{Dir: dir, Durable: durable})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err != nil {
			c.Stop()
			t.Fatal(err)
		}
		var fsync string
		conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync)
		conn.Close(ctx)
		c.Stop()
		if want := map[bool]string{true: "on", false: "off"}[durable]; fsync != want {
			t.Errorf("Durable=%v: fsync %q, want %q", durable, fsync, want)
		}
	}
}
