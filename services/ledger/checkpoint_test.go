package ledger

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

func TestCheckpointsSignedPublishedAndRecordedOnce(t *testing.T) {
	ns := natstest.Start(t)
	pool := newPool(t)
	s := newService(t, Config{CheckpointEvery: 10, CheckpointInterval: 100 * time.Millisecond}, pool, ns.JS)
	run(t, s)
	ctx := context.Background()
	const n = 24
	for i := range n {
		w := fmt.Sprintf("w%d", i%3)
		if _, err := ns.JS.PublishMsg(ctx, msg(t, fmt.Sprintf("e%d", i), events.Subject("tenure.hr", "joiner", w), w, t0, joiner(w))); err != nil {
			t.Fatal(err)
		}
		if i%12 == 11 {
			waitFor(t, "the events", 20*time.Second, func() bool { return eventCount(t, pool) == int64(i+1) })
		}
	}
	// Every checkpoint's own event is recorded (once), and then the ledger goes quiet: a
	// checkpoint event alone never causes another checkpoint.
	var cps, cpEntries int64
	waitFor(t, "the checkpoints to settle", 20*time.Second, func() bool {
		var last, lastEvent int64
		pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM entries WHERE type = $1),
			(SELECT coalesce(max(seq), 0) FROM checkpoints), (SELECT max(seq) FROM entries WHERE type <> $1)`, checkpointType).Scan(&cps, &cpEntries, &last, &lastEvent)
		return cps > 0 && cps == cpEntries && last >= lastEvent
	})
	time.Sleep(400 * time.Millisecond) // four intervals
	var again int64
	pool.QueryRow(ctx, "SELECT count(*) FROM checkpoints").Scan(&again)
	if again != cps {
		rows, _ := pool.Query(ctx, "SELECT seq, type, msg_id FROM entries ORDER BY seq")
		for rows.Next() {
			var seq int64
			var typ, id string
			rows.Scan(&seq, &typ, &id)
			t.Logf("%d %s %s", seq, typ, id)
		}
		rows.Close()
		t.Fatalf("checkpoints went on without new events: %d, then %d", cps, again)
	}

	list, err := s.ListCheckpoints(ctx, &ledgerv1.ListCheckpointsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list.Checkpoints {
		if err := VerifyCheckpoint(s.PublicKey(), c); err != nil {
			t.Error(err)
		}
	}
	// The recorded checkpoint events carry the signed checkpoints.
	res, err := s.Query(ctx, &ledgerv1.QueryRequest{SubjectPrefix: CheckpointSubject})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(res.Entries)) != cps || !strings.Contains(res.Entries[0].PayloadJson, `"signature"`) || res.Entries[0].MsgId != fmt.Sprintf("ledger:checkpoint:%d", list.Checkpoints[0].Seq) {
		t.Errorf("checkpoint entries: %v", res.Entries)
	}
	v, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Ok || v.CheckpointsChecked != cps || v.LastCheckpointSeq != list.Checkpoints[len(list.Checkpoints)-1].Seq {
		t.Fatalf("Verify = %+v", v)
	}
	pk, _ := s.GetPublicKey(ctx, nil)
	if parsed, err := ParsePublicKeyPEM([]byte(pk.Pem)); err != nil || !parsed.Equal(s.PublicKey()) || pk.KeyId != KeyID(s.PublicKey()) {
		t.Errorf("public key PEM: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	path := t.TempDir() + "/ledger.key"
	a, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateKey(path)
	if err != nil || !a.Equal(b) {
		t.Fatalf("reloaded key differs: %v", err)
	}
}

// Tampering as a database superuser that the chain alone cannot catch: the signed
// checkpoints do.
func TestVerifyCheckpointsCatchRewrites(t *testing.T) {
	const n = 30
	_, otherKey, _ := ed25519.GenerateKey(nil)
	exec := func(t *testing.T, s *Service, sqls ...string) {
		t.Helper()
		for _, q := range sqls {
			if _, err := s.pool.Exec(context.Background(), q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	cases := []struct {
		name    string
		cfg     Config
		tamper  func(t *testing.T, s *Service)
		broken  int64
		problem string
	}{
		{"drop the triggers and rewrite the whole chain", Config{}, func(t *testing.T, s *Service) {
			exec(t, s, "DROP TRIGGER entries_append_only ON ledger.entries", "DROP TRIGGER head_forward_only ON ledger.head")
			rewriteChain(t, s, 7, func(e *entry) { e.Actor = "mallory" })
		}, 1, "the checkpoint of 10 entries signed"},
		{"forged checkpoint", Config{}, func(t *testing.T, s *Service) {
			e := loadEntry(t, s, 25)
			now := dbTime(time.Now())
			c := &ledgerv1.Checkpoint{Seq: 25, HeadHash: e.Hash, KeyId: KeyID(otherKey.Public().(ed25519.PublicKey))}
			sig := ed25519.Sign(otherKey, checkpointMessage(25, e.Hash, now))
			if _, err := s.pool.Exec(context.Background(), "INSERT INTO checkpoints VALUES ($1, $2, $3, $4, $5)", c.Seq, c.HeadHash, now, c.KeyId, sig); err != nil {
				t.Fatal(err)
			}
		}, 25, "does not trust"},
		{"edited checkpoint signature", Config{}, func(t *testing.T, s *Service) {
			exec(t, s, "ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL", "UPDATE ledger.checkpoints SET signed_at = signed_at + interval '1 second' WHERE seq = 20")
		}, 20, "signature does not match"},
		{"checkpoints deleted", Config{CheckpointGrace: time.Millisecond}, func(t *testing.T, s *Service) {
			exec(t, s, "ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL", "DELETE FROM ledger.checkpoints")
			time.Sleep(5 * time.Millisecond)
		}, 1, "checkpoints are missing"},
		{"tail deleted and head moved back", Config{}, func(t *testing.T, s *Service) {
			exec(t, s, "ALTER TABLE ledger.entries DISABLE TRIGGER ALL", "ALTER TABLE ledger.head DISABLE TRIGGER ALL", "DELETE FROM ledger.entries WHERE seq >= 20")
			setHead(t, s, 19)
		}, 20, "covers entries the database no longer has"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.VerifyPageSize = 8
			s := newService(t, c.cfg, newPool(t), nil)
			es := sampleEntries(t, "c", n)
			// Checkpoints at 10, 20 and 30.
			for i := 0; i < n; i += 10 {
				appendAll(t, s, es[i:i+10], 10)
				if cp, err := s.Checkpoint(context.Background()); err != nil || cp == nil || cp.Seq != int64(i+10) {
					t.Fatalf("Checkpoint = %v, %v", cp, err)
				}
			}
			verifyOK(t, s, n)
			c.tamper(t, s)
			res, err := s.Verify(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if c.broken == 0 {
				if !res.Ok {
					t.Fatalf("Verify = %+v, want ok", res)
				}
				return
			}
			if res.Ok || res.FirstBrokenSeq != c.broken || !strings.Contains(res.Problem, c.problem) {
				t.Fatalf("Verify = ok %v first_broken_seq %d problem %q; want broken at %d with %q", res.Ok, res.FirstBrokenSeq, res.Problem, c.broken, c.problem)
			}
			t.Logf("%s: %s", c.name, res.Problem)
		})
	}
}

// rewriteChain edits entries from seq `from` on with edit and recomputes their leaf hashes,
// then the head's root and range, as a forger with superuser rights would.
func rewriteChain(t *testing.T, s *Service, from int64, edit func(*entry)) {
	t.Helper()
	ctx := context.Background()
	head := headSeq(t, s.pool)
	for seq := from; seq <= head; seq++ {
		e := loadEntry(t, s, seq)
		edit(&e)
		e.Hash = leafHash(&e)
		if _, err := s.pool.Exec(ctx, "UPDATE entries SET actor = $1, hash = $2 WHERE seq = $3", e.Actor, e.Hash, seq); err != nil {
			t.Fatal(err)
		}
	}
	setHead(t, s, head)
}

// setHead points the head at entry seq with the root and range of the stored hashes 1..seq,
// as a forger would after cutting or rewriting entries (the head's triggers must be off).
func setHead(t *testing.T, s *Service, seq int64) {
	t.Helper()
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	r, err := rangeFromHashes(ctx, tx, 0, rangeFactory.NewEmptyRange(0), seq)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE head SET seq = $1, hash = $2, tree_range = $3", seq, rootOf(r), encodeRange(r)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// The ledger's run-time role may only INSERT and SELECT its entries and checkpoints:
// changing them fails on privileges, before any trigger, and so does disabling or dropping
// a trigger.
func TestWriterRoleMayOnlyInsertAndSelect(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	admin := connect(t, url)
	for _, q := range []string{
		"CREATE ROLE ledger_owner NOLOGIN",
		"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ledger_writer') THEN CREATE ROLE ledger_writer LOGIN; END IF; END $$",
		"CREATE SCHEMA ledger AUTHORIZATION ledger_owner",
		"GRANT CONNECT ON DATABASE " + pgx.Identifier{dbName(t, url)}.Sanitize() + " TO ledger_writer",
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { admin.Exec(context.Background(), "DROP OWNED BY ledger_owner CASCADE; DROP ROLE ledger_owner") })
	// The owner's pool: a superuser connection that acts as the owner.
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	ownerPool := connect(t, url+sep+"options=-c%20role%3Dledger_owner")
	var owner string
	ownerPool.QueryRow(ctx, "SELECT current_user").Scan(&owner)
	if owner != "ledger_owner" {
		t.Fatalf("owner pool acts as %s", owner)
	}
	writerURL := strings.Replace(url, "postgres://postgres@", "postgres://ledger_writer@", 1)
	writer := connect(t, writerURL)
	s, err := New(ctx, Config{SigningKey: testKey, WriterRole: "ledger_writer"}, Deps{Pool: writer, AdminPool: ownerPool})
	if err != nil {
		t.Fatal(err)
	}
	var who string
	writer.QueryRow(ctx, "SELECT current_user").Scan(&who)
	if who != "ledger_writer" {
		t.Fatalf("writer connects as %s", who)
	}
	appendAll(t, s, sampleEntries(t, "w", 12), 4)
	if _, err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	verifyOK(t, s, 12)
	if n, err := pgstore.Pending(ctx, writer); err != nil || n != 1 {
		t.Errorf("outbox: %d, %v", n, err)
	}
	for _, q := range []string{
		"UPDATE entries SET payload = 'x' WHERE seq = 2",
		"DELETE FROM entries WHERE seq = 5",
		"TRUNCATE entries",
		"UPDATE checkpoints SET seq = 1",
		"DELETE FROM checkpoints",
		"TRUNCATE checkpoints",
		"ALTER TABLE entries DISABLE TRIGGER entries_append_only",
		"ALTER TABLE entries DISABLE TRIGGER ALL",
		"DROP TRIGGER entries_append_only ON entries",
		"ALTER TABLE checkpoints DISABLE TRIGGER ALL",
		"ALTER TABLE entries ADD COLUMN x int",
		"DROP TABLE entries",
		"DROP FUNCTION reject_change() CASCADE",
		"CREATE TABLE entries2 (x int)",
		"DELETE FROM head",
	} {
		_, err := writer.Exec(ctx, q)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s as the writer: err = %v, want insufficient_privilege (42501)", q, err)
		}
	}
	// A replica started by `tenure serve` holds only the writer's credentials: the schema
	// was set up by the owner, so it starts without migrating.
	s2, err := New(ctx, Config{SigningKey: testKey, WriterRole: "ledger_writer"}, Deps{Pool: writer})
	if err != nil {
		t.Fatal(err)
	}
	verifyOK(t, s2, 12)
	// The head still moves forward only.
	if _, err := writer.Exec(ctx, "UPDATE head SET seq = 1"); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("moving the head back: %v", err)
	}
	verifyOK(t, s, 12)
}

func dbName(t *testing.T, url string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

// Every CheckpointEvery entries the appender asks the checkpoint loop for a checkpoint.
func TestCheckpointEveryNEntries(t *testing.T) {
	s := newService(t, Config{CheckpointEvery: 10, CheckpointInterval: time.Hour}, newPool(t), nil)
	appendAll(t, s, sampleEntries(t, "n", 9), 9)
	if len(s.cpDue) != 0 {
		t.Fatal("checkpoint asked for after 9 entries")
	}
	appendAll(t, s, sampleEntries(t, "m", 1), 1)
	if len(s.cpDue) != 1 {
		t.Fatal("no checkpoint asked for after 10 entries")
	}
	<-s.cpDue
	if cp, err := s.Checkpoint(context.Background()); err != nil || cp.Seq != 10 {
		t.Fatalf("Checkpoint = %v, %v", cp, err)
	}
	appendAll(t, s, sampleEntries(t, "o", 9), 9)
	if len(s.cpDue) != 0 {
		t.Fatal("checkpoint asked for 9 entries after the last one")
	}
	if cp, err := s.Checkpoint(context.Background()); err != nil || cp.Seq != 19 {
		t.Fatalf("Checkpoint = %v, %v", cp, err)
	}
	if cp, err := s.Checkpoint(context.Background()); err != nil || cp != nil {
		t.Fatalf("second Checkpoint without new entries = %v, %v", cp, err)
	}
}

// After a key rotation, checkpoints signed with the old key verify when it is trusted.
func TestKeyRotation(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	_, oldKey, _ := ed25519.GenerateKey(nil)
	_, newKey, _ := ed25519.GenerateKey(nil)
	a := newService(t, Config{SigningKey: oldKey}, connect(t, url), nil)
	appendAll(t, a, sampleEntries(t, "a", 5), 5)
	if _, err := a.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	b := newService(t, Config{SigningKey: newKey, TrustedKeys: []ed25519.PublicKey{oldKey.Public().(ed25519.PublicKey)}}, connect(t, url), nil)
	appendAll(t, b, sampleEntries(t, "b", 5), 5)
	if _, err := b.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := b.Verify(ctx)
	if err != nil || !res.Ok || res.CheckpointsChecked != 2 {
		t.Fatalf("Verify with the old key trusted = %+v, %v", res, err)
	}
	c := newService(t, Config{SigningKey: newKey}, connect(t, url), nil)
	if res, err := c.Verify(ctx); err != nil || res.Ok || res.FirstBrokenSeq != 5 || !strings.Contains(res.Problem, "does not trust") {
		t.Fatalf("Verify without the old key = %+v, %v", res, err)
	}
}
