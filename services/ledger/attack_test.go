package ledger

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// attackEnv is a ledger with both witnesses (the JetStream stream and a directory) and 30
// entries signed at 10, 20 and 30: the state an insider with PostgreSQL superuser rights
// starts from.
type attackEnv struct {
	s   *Service
	url string
	js  jetstream.JetStream
	dir string
}

func newAttackEnv(t *testing.T) *attackEnv {
	t.Helper()
	ns := natstest.Start(t)
	a := &attackEnv{url: pgtest.NewDatabase(t), js: ns.JS, dir: t.TempDir()}
	a.s = a.open(t, testKey)
	es := sampleEntries(t, "x", 30)
	for i := 0; i < 30; i += 10 {
		appendAll(t, a.s, es[i:i+10], 10)
		a.checkpoint(t, a.s, int64(i+10))
	}
	verifyOK(t, a.s, 30)
	return a
}

// open starts a ledger process on the environment's database and witnesses.
func (a *attackEnv) open(t *testing.T, key ed25519.PrivateKey) *Service {
	t.Helper()
	return newService(t, Config{SigningKey: key, WitnessDir: a.dir, VerifyPageSize: 8}, connect(t, a.url), a.js)
}

func (a *attackEnv) checkpoint(t *testing.T, s *Service, want int64) {
	t.Helper()
	cp, err := s.Checkpoint(context.Background())
	if err != nil || cp == nil || cp.Seq != want {
		t.Fatalf("Checkpoint = %v, %v; want one at %d", cp, err, want)
	}
}

func (a *attackEnv) exec(t *testing.T, sqls ...string) {
	t.Helper()
	for _, q := range sqls {
		if _, err := a.s.pool.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// wantTampered checks that Verify reports the finding with a message containing each of
// msgs, and that tenurectl would exit with the tampering code.
func wantTampered(t *testing.T, s *Service, finding string, msgs ...string) *ledgerv1.VerifyResponse {
	t.Helper()
	res, err := s.Verify(context.Background())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if res.Ok || res.Finding != finding {
		t.Fatalf("Verify = ok %v finding %q problem %q; want finding %q", res.Ok, res.Finding, res.Problem, finding)
	}
	for _, m := range msgs {
		if !strings.Contains(res.Problem, m) {
			t.Errorf("problem %q lacks %q", res.Problem, m)
		}
	}
	t.Logf("%s: %s", res.Finding, res.Problem)
	return res
}

// wantRefuses checks that s refuses to sign, is not ready, and announced it.
func wantRefuses(t *testing.T, a *attackEnv, s *Service, finding string) {
	t.Helper()
	appendAll(t, s, sampleEntries(t, "after-"+finding, 3), 3) // new events arrive
	_, err := s.Checkpoint(context.Background())
	if !errors.Is(err, ErrInconsistent) {
		t.Fatalf("Checkpoint after tampering = %v; want ErrInconsistent", err)
	}
	if inc := s.Inconsistent(); inc == nil || inc.Finding != finding {
		t.Fatalf("Inconsistent = %+v; want finding %s", inc, finding)
	}
	if s.Ready() == nil {
		t.Error("Ready = nil after the ledger refused to sign")
	}
	if _, err := s.ExportEvidence(context.Background(), &ledgerv1.ExportEvidenceRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ExportEvidence while refusing = %v, want FailedPrecondition", err)
	}
	// It stays refused: the next attempt does not sign either.
	if _, err := s.Checkpoint(context.Background()); !errors.Is(err, ErrInconsistent) {
		t.Errorf("second Checkpoint = %v", err)
	}
	st, err := a.js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), AlertInconsistentSubject)
	if err != nil {
		t.Fatalf("no %s alert: %v", AlertInconsistentSubject, err)
	}
	var alert ledgerv1.LedgerInconsistentAlert
	if err := proto.Unmarshal(m.Data, &alert); err != nil || alert.Finding != finding || alert.Detail == "" || (finding != "key" && alert.SignedSize == 0) {
		t.Errorf("alert = %+v, %v", &alert, err)
	}
	if m.Header.Get(events.HeaderType) != AlertInconsistentSubject {
		t.Errorf("alert ce-type = %q", m.Header.Get(events.HeaderType))
	}
}

const disableAll = "ALTER TABLE ledger.entries DISABLE TRIGGER ALL; ALTER TABLE ledger.head DISABLE TRIGGER ALL; ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL"

// Each attack of issue 17, as a PostgreSQL superuser with the triggers disabled.
func TestAttacksAsSuperuser(t *testing.T) {
	t.Run("update one field", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll, "UPDATE ledger.entries SET actor = 'mallory' WHERE seq = 12")
		wantTampered(t, a.s, "content", "entry 12: stored hash", "does not match its content")
	})
	t.Run("delete a middle entry", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll, "DELETE FROM ledger.entries WHERE seq = 15")
		wantTampered(t, a.s, "missing", "entry 15 is missing")
	})
	t.Run("swap two entries", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll, "UPDATE ledger.entries SET seq = 1000 WHERE seq = 4",
			"UPDATE ledger.entries SET seq = 4 WHERE seq = 9", "UPDATE ledger.entries SET seq = 9 WHERE seq = 1000")
		wantTampered(t, a.s, "content", "entry 4: stored hash")
	})
	t.Run("truncate the tail to a checkpoint boundary", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll, "DELETE FROM ledger.entries WHERE seq > 20")
		wantTampered(t, a.s, "truncation", "the entries end at 20 but the head is at 30")
	})
	t.Run("truncate the tail and reset the head, checkpoints kept", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll, "DELETE FROM ledger.entries WHERE seq > 20")
		setHead(t, a.s, 20)
		wantTampered(t, a.s, "truncation", "signed checkpoint 30 covers entries the database no longer has (they end at 20)")
		wantRefuses(t, a, a.s, "rollback")
	})
	t.Run("truncate the tail, delete its checkpoints and reset the head", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll, "DELETE FROM ledger.entries WHERE seq > 20", "DELETE FROM ledger.checkpoints WHERE seq > 20")
		setHead(t, a.s, 20)
		// The database is consistent with itself; the witnesses are not fooled.
		wantTampered(t, a.s, "rollback", "holds a checkpoint of 30 entries", "the database ends at entry 20", "its newest checkpoint is at 20")
		wantRefuses(t, a, a.s, "rollback")
		// A restarted ledger (no memory) refuses too: the witness holds 30.
		wantRefuses(t, a, a.open(t, testKey), "rollback")
	})
	t.Run("rewrite with recomputed hashes and deleted checkpoints, then new events", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll, "DELETE FROM ledger.checkpoints WHERE seq >= 10")
		rewriteChain(t, a.s, 7, func(e *entry) { e.Actor = "mallory" })
		wantTampered(t, a.s, "fork", "holds a checkpoint of 30 entries with root", "the database's tree of the first 30 entries has root", "rewritten in entries 1..30")
		// Even before new events arrive, the next tick finds it.
		if _, err := a.s.Checkpoint(context.Background()); !errors.Is(err, ErrInconsistent) {
			t.Fatalf("Checkpoint on an idle ledger after the rewrite = %v, want ErrInconsistent", err)
		}
		// The running ledger refuses to sign the forged tree once new events arrive...
		wantRefuses(t, a, a.s, "fork")
		// ... and so does a restarted one, from the witness.
		wantRefuses(t, a, a.open(t, testKey), "fork")
		wantTampered(t, a.s, "fork")
	})
	t.Run("rewrite with recomputed hashes, checkpoints kept", func(t *testing.T) {
		a := newAttackEnv(t)
		a.exec(t, disableAll)
		rewriteChain(t, a.s, 17, func(e *entry) { e.Actor = "mallory" })
		// The checkpoint at 10 still matches: the rewrite lies in 11..20.
		res := wantTampered(t, a.s, "fork", "the checkpoint of 20 entries signed", "history was rewritten in entries 11..20")
		if res.FirstBrokenSeq != 11 {
			t.Errorf("first_broken_seq = %d, want 11", res.FirstBrokenSeq)
		}
	})
	t.Run("replace the signing key", func(t *testing.T) {
		a := newAttackEnv(t)
		_, other, _ := ed25519.GenerateKey(nil)
		s2 := a.open(t, other)
		wantTampered(t, s2, "checkpoint", "does not verify with the ledger's keys", "was the signing key replaced?")
		wantRefuses(t, a, s2, "key")
	})
	t.Run("restore an older pg_dump while the witness holds newer checkpoints", func(t *testing.T) {
		ns := natstest.Start(t)
		a := &attackEnv{url: pgtest.NewDatabase(t), js: ns.JS, dir: t.TempDir()}
		a.s = a.open(t, testKey)
		es := sampleEntries(t, "d", 30)
		appendAll(t, a.s, es[:20], 10)
		a.checkpoint(t, a.s, 20)
		dump := filepath.Join(t.TempDir(), "ledger.sql")
		pgTool(t, "pg_dump", "--schema=ledger", "--no-owner", "--file", dump, a.url)
		appendAll(t, a.s, es[20:], 10)
		a.checkpoint(t, a.s, 30)
		verifyOK(t, a.s, 30)
		// The backup operator restores the older dump.
		a.exec(t, "DROP SCHEMA ledger CASCADE")
		pgTool(t, "psql", "--quiet", "--set", "ON_ERROR_STOP=1", "--file", dump, a.url)
		wantTampered(t, a.s, "rollback", "holds a checkpoint of 30 entries", "the database ends at entry 20")
		wantRefuses(t, a, a.s, "rollback")
		wantRefuses(t, a, a.open(t, testKey), "rollback")
	})
}

// pgTool runs a PostgreSQL client program of the test cluster's installation.
func pgTool(t *testing.T, name string, args ...string) {
	t.Helper()
	bin := name
	for _, dir := range []string{os.Getenv("PGBIN"), "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"} {
		if dir == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			bin = filepath.Join(dir, name)
			break
		}
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}

// An honest ledger keeps signing across restarts, each checkpoint extends the last and lands
// in both witnesses; an auditor's saved checkpoint verifies later with a consistency proof.
func TestWitnessedCheckpointsExtendEachOther(t *testing.T) {
	ctx := context.Background()
	ns := natstest.Start(t)
	a := &attackEnv{url: pgtest.NewDatabase(t), js: ns.JS, dir: t.TempDir()}
	a.s = a.open(t, testKey)
	appendAll(t, a.s, sampleEntries(t, "a", 13), 5)
	a.checkpoint(t, a.s, 13)
	saved, err := LatestWitnessed(ctx, ns.JS)
	if err != nil || saved == nil {
		t.Fatalf("LatestWitnessed = %q, %v", saved, err)
	}
	cp, err := OpenCheckpoint(saved, DefaultOrigin, testKey.Public().(ed25519.PublicKey))
	if err != nil || cp.Size != 13 {
		t.Fatalf("witnessed checkpoint = %+v, %v", cp, err)
	}
	if !strings.HasPrefix(string(saved), "tenure/ledger\n13\n") {
		t.Errorf("not a tlog-checkpoint note:\n%s", saved)
	}
	if n := witnessFiles(t, a.dir); n != 1 {
		t.Errorf("directory witness has %d files, want 1", n)
	}
	// A restart (memory lost) picks up from the witness and goes on signing.
	s2 := a.open(t, testKey)
	appendAll(t, s2, sampleEntries(t, "b", 1000), 200)
	a.checkpoint(t, s2, 1013)
	appendAll(t, a.s, sampleEntries(t, "c", 7), 7)
	a.checkpoint(t, a.s, 1020) // the first process catches up through the witness
	if n := witnessFiles(t, a.dir); n != 3 {
		t.Errorf("directory witness has %d files, want 3", n)
	}
	if b, err := (DirWitness{Dir: a.dir}).Latest(ctx); err != nil || !strings.HasPrefix(string(b), "tenure/ledger\n1020\n") {
		t.Errorf("directory witness latest = %q, %v", b, err)
	}
	// The auditor's checkpoint of 13 entries, checked later.
	res, err := a.s.VerifyAgainst(ctx, saved)
	if err != nil || !res.Ok || res.WitnessedSize != 13 || res.TreeSize != 1020 {
		t.Fatalf("VerifyAgainst(saved) = %+v, %v", res, err)
	}
	if err := VerifyConsistency(13, res.TreeSize, res.ConsistencyProof, cp.Root, res.HeadHash); err != nil {
		t.Fatalf("consistency proof: %v", err)
	}
	// A tampered proof or root does not verify.
	bad := append([][]byte(nil), res.ConsistencyProof...)
	bad[0] = append([]byte(nil), bad[0]...)
	bad[0][0] ^= 1
	if VerifyConsistency(13, res.TreeSize, bad, cp.Root, res.HeadHash) == nil {
		t.Error("a changed consistency proof verified")
	}
	// The default: the newest witnessed checkpoint.
	res, err = a.s.Verify(ctx)
	if err != nil || !res.Ok || res.WitnessedSize != 1020 || res.WitnessedFrom == "" {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
	if a.s.Ready() != nil || s2.Ready() != nil {
		t.Error("an honest ledger is not ready")
	}
}

// witnessFiles counts the checkpoint files under a directory witness.
func witnessFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".checkpoint") {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
