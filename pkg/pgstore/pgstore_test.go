package pgstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool, err := Connect(ctx, pgtest.NewDatabase(t), "svc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := Migrate(ctx, pool, "svc", os.DirFS("testdata"), "migrations"); err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestMigrateIsIdempotentAndOrdered(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	if err := Migrate(ctx, pool, "svc", os.DirFS("testdata"), "migrations"); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	names, err := Applied(ctx, pool, "svc")
	if err != nil {
		t.Fatal(err)
	}
	want := "pgstore/001_inbox_outbox.sql svc/001_things.sql svc/002_more.sql"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("applied %q, want %q", got, want)
	}
	// Tables live in the service's schema, found through search_path.
	if _, err := pool.Exec(ctx, "INSERT INTO things (id, note) VALUES ('a', 'b')"); err != nil {
		t.Fatal(err)
	}
	var schema string
	pool.QueryRow(ctx, "SELECT table_schema FROM information_schema.tables WHERE table_name = 'things'").Scan(&schema)
	if schema != "svc" {
		t.Fatalf("things in schema %q", schema)
	}
}

func TestFailedMigrationLeavesNothing(t *testing.T) {
	ctx := context.Background()
	pool, err := Connect(ctx, pgtest.NewDatabase(t), "bad")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dir := t.TempDir()
	os.MkdirAll(dir+"/m", 0o755)
	os.WriteFile(dir+"/m/001_ok.sql", []byte("CREATE TABLE a (x int);"), 0o644)
	os.WriteFile(dir+"/m/002_bad.sql", []byte("CREATE TABLE b (x int); SELECT no_such_function();"), 0o644)
	err = Migrate(ctx, pool, "bad", os.DirFS(dir), "m")
	if err == nil || !strings.Contains(err.Error(), "002_bad.sql") {
		t.Fatalf("want an error naming 002_bad.sql, got %v", err)
	}
	var b bool
	pool.QueryRow(ctx, "SELECT to_regclass('bad.b') IS NOT NULL").Scan(&b)
	if b {
		t.Fatal("table b exists after its migration failed")
	}
}

func TestClaimDedupes(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	effects := 0
	handle := func() {
		err := InTx(ctx, pool, func(tx pgx.Tx) error {
			first, err := Claim(ctx, tx, "c", "m1", "s")
			if err != nil || !first {
				return err
			}
			effects++
			_, err = tx.Exec(ctx, "INSERT INTO things (id, n) VALUES ('x', 1) ON CONFLICT (id) DO UPDATE SET n = things.n + 1")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	handle()
	handle()
	var n int
	pool.QueryRow(ctx, "SELECT n FROM things WHERE id='x'").Scan(&n)
	if effects != 1 || n != 1 {
		t.Fatalf("effects=%d n=%d, want one effect", effects, n)
	}
	// A claim in a rolled-back transaction is forgotten: the redelivery does the work.
	InTx(ctx, pool, func(tx pgx.Tx) error {
		Claim(ctx, tx, "c", "m2", "s")
		return errors.New("crash before commit")
	})
	var first bool
	InTx(ctx, pool, func(tx pgx.Tx) error { first, _ = Claim(ctx, tx, "c", "m2", "s"); return nil })
	if !first {
		t.Fatal("a rolled-back claim blocked the retry")
	}
}

func enqueue(t *testing.T, pool *pgxpool.Pool, ids ...string) {
	t.Helper()
	err := InTx(context.Background(), pool, func(tx pgx.Tx) error {
		var evs []events.Event
		for _, id := range ids {
			evs = append(evs, events.Event{ID: id, Subject: "tenure.hr.joiner." + id, Source: "test", Payload: &eventsv1.WorkerEvent{EventId: id}})
		}
		return Enqueue(context.Background(), tx, evs...)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestOutboxRolledBackIsNeverPublished(t *testing.T) {
	pool := newPool(t)
	ns := natstest.Start(t)
	ctx := context.Background()
	InTx(ctx, pool, func(tx pgx.Tx) error {
		Enqueue(ctx, tx, events.Event{ID: "r1", Subject: "tenure.hr.joiner.r1", Payload: &eventsv1.WorkerEvent{}})
		return errors.New("handler failed")
	})
	if n, err := NewRelay(pool, ns.JS, nil).Flush(ctx); err != nil || n != 0 {
		t.Fatalf("flush = %d, %v", n, err)
	}
	if got := streamMsgs(t, ns.JS); got != 0 {
		t.Fatalf("stream holds %d messages", got)
	}
}

// A service that committed and stopped before publishing gets the event out once on restart.
func TestOutboxSurvivesStopBetweenCommitAndPublish(t *testing.T) {
	pool := newPool(t)
	ns := natstest.Start(t)
	ctx := context.Background()
	enqueue(t, pool, "a1", "a2") // committed; no relay was running

	relay := NewRelay(pool, ns.JS, nil) // "restart"
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { relay.Run(rctx); close(done) }()
	waitFor(t, func() bool { n, _ := Pending(ctx, pool); return n == 0 })
	cancel()
	<-done
	if got := streamMsgs(t, ns.JS); got != 2 {
		t.Fatalf("stream holds %d messages, want 2", got)
	}
	raw, err := mustStream(t, ns.JS).GetLastMsgForSubject(ctx, "tenure.hr.joiner.a1")
	if err != nil {
		t.Fatal(err)
	}
	if raw.Header.Get("Nats-Msg-Id") != "a1" || raw.Header.Get(events.HeaderType) != "tenure.hr.joiner" {
		t.Fatalf("headers %v", raw.Header)
	}
}

// A crash after JetStream acknowledged but before the row was deleted republishes with the
// same Nats-Msg-Id, and JetStream keeps one copy.
// In atomic-batch mode the republished round is refused as a whole (it holds a message
// JetStream has) and goes out again message by message.
func TestOutboxCrashAfterPublishIsDeduped(t *testing.T) {
	for _, atomicMin := range []int{0, 2} {
		t.Run(fmt.Sprintf("atomic_min=%d", atomicMin), func(t *testing.T) {
			pool := newPool(t)
			ns := natstest.Start(t)
			ctx := context.Background()
			enqueue(t, pool, "b1", "b2")
			crashing := NewRelay(pool, ns.JS, nil)
			crashing.PublishInAtomicBatches(atomicMin)
			crashing.afterPublish = func() error { return errors.New("killed") }
			if _, err := crashing.Flush(ctx); err == nil {
				t.Fatal("want the simulated crash")
			}
			if n, _ := Pending(ctx, pool); n != 2 {
				t.Fatalf("pending = %d, want the rows kept", n)
			}
			enqueue(t, pool, "b3")
			restarted := NewRelay(pool, ns.JS, nil)
			restarted.PublishInAtomicBatches(atomicMin)
			if n, err := restarted.Flush(ctx); err != nil || n != 3 {
				t.Fatalf("flush after restart = %d, %v", n, err)
			}
			if got := streamMsgs(t, ns.JS); got != 3 {
				t.Fatalf("stream holds %d messages, want 3", got)
			}
		})
	}
}

func TestConcurrentRelaysPublishEachOnce(t *testing.T) {
	for _, atomicMin := range []int{0, 10} {
		t.Run(fmt.Sprintf("atomic_min=%d", atomicMin), func(t *testing.T) { concurrentRelays(t, atomicMin) })
	}
}

func concurrentRelays(t *testing.T, atomicMin int) {
	pool := newPool(t)
	ns := natstest.Start(t)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 300; i++ {
		ids = append(ids, events.NewID())
	}
	enqueue(t, pool, ids...)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := NewRelay(pool, ns.JS, nil)
			r.PublishInAtomicBatches(atomicMin)
			r.batch = 50
			for {
				n, err := r.Flush(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if n == 0 {
					if p, _ := Pending(ctx, pool); p == 0 {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if got := streamMsgs(t, ns.JS); got != 300 {
		t.Fatalf("stream holds %d messages, want 300", got)
	}
}

func TestBootstrapConfinesEachService(t *testing.T) {
	ctx := context.Background()
	admin := pgtest.NewDatabase(t)
	schemas := []string{"alpha", "beta"}
	if err := Bootstrap(ctx, admin, schemas, nil); err != nil {
		t.Fatal(err)
	}
	if err := Bootstrap(ctx, admin, schemas, nil); err != nil {
		t.Fatalf("second bootstrap: %v", err)
	}
	alphaURL, _ := ServiceURL(admin, "alpha", "")
	alpha, err := Connect(ctx, alphaURL, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	defer alpha.Close()
	if err := Migrate(ctx, alpha, "alpha", nil, ""); err != nil {
		t.Fatalf("alpha migrates its own schema: %v", err)
	}
	if _, err := alpha.Exec(ctx, "CREATE TABLE beta.intrude (x int)"); err == nil {
		t.Fatal("alpha created a table in beta's schema")
	}
	if _, err := alpha.Exec(ctx, "CREATE TABLE public.intrude (x int)"); err == nil {
		t.Fatal("alpha created a table in public")
	}
}

func TestConnectErrorsAreClearAndRedacted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := Connect(ctx, "postgres://u:s3cret@127.0.0.1:1/db?sslmode=disable&connect_timeout=2", "svc")
	if err == nil || !strings.Contains(err.Error(), "unreachable") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("got %v", err)
	}
	_, err = Connect(ctx, "postgres://u:s3cret@host:notaport/db", "svc")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("got %v", err)
	}
}

func mustStream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	st, err := js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBootstrapSplitOwnerAndLogin(t *testing.T) {
	ctx := context.Background()
	admin := pgtest.NewDatabase(t)
	for i := 0; i < 2; i++ {
		if err := BootstrapSplit(ctx, admin, "vault", ""); err != nil {
			t.Fatalf("bootstrap %d: %v", i, err)
		}
	}
	owner, err := Connect(ctx, AsRole(admin, OwnerRoleName("vault")), "vault")
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if _, err := owner.Exec(ctx, "CREATE TABLE vault.items (x int); GRANT USAGE ON SCHEMA vault TO tenure_vault; GRANT SELECT, INSERT ON vault.items TO tenure_vault"); err != nil {
		t.Fatal(err)
	}
	var tableOwner string
	owner.QueryRow(ctx, "SELECT tableowner FROM pg_tables WHERE tablename = 'items'").Scan(&tableOwner)
	if tableOwner != "tenure_vault_owner" {
		t.Fatalf("table owned by %q", tableOwner)
	}
	loginURL, _ := ServiceURL(admin, "vault", "")
	login, err := Connect(ctx, loginURL, "vault")
	if err != nil {
		t.Fatal(err)
	}
	defer login.Close()
	if _, err := login.Exec(ctx, "INSERT INTO items VALUES (1)"); err != nil {
		t.Fatalf("login role cannot insert: %v", err)
	}
	for _, stmt := range []string{"DELETE FROM items", "ALTER TABLE items DISABLE TRIGGER ALL", "DROP TABLE items", "CREATE TABLE vault.x (y int)"} {
		if _, err := login.Exec(ctx, stmt); err == nil {
			t.Errorf("login role could %s", stmt)
		}
	}
}
