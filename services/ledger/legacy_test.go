package ledger

import (
	"context"
	"crypto/ed25519"
	"io/fs"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenure-dev/tenure/pkg/pgstore"
)

// A ledger created before the Merkle tree (migrations 001..004, the linear hash chain, legacy
// checkpoints) is upgraded in place: its entries stay as they are, are checked as a chain,
// and become the first leaves of the tree, which the first tree checkpoint commits to.
func TestLegacyLedgerIsVerifiedAsAPrefix(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	old := fstest.MapFS{}
	for _, n := range []string{"001_ledger.sql", "002_checkpoints.sql", "003_prunes.sql", "004_revocations.sql"} {
		b, err := fs.ReadFile(migrations, "migrations/"+n)
		if err != nil {
			t.Fatal(err)
		}
		old["migrations/"+n] = &fstest.MapFile{Data: b}
	}
	if err := pgstore.Migrate(ctx, pool, Schema, old, "migrations"); err != nil {
		t.Fatal(err)
	}
	// 25 entries appended the old way, with legacy checkpoints at 10 and 20.
	prev := genesis
	var rows [][]any
	now := dbTime(time.Now())
	for i, in := range sampleEntries(t, "legacy", 25) {
		e := *in
		e.Seq, e.RecordedAt, e.PrevHash = int64(i+1), now, prev
		e.Hash = chainHash(prev, &e)
		prev = e.Hash
		rows = append(rows, rowOf(&e))
		if e.Seq%10 == 0 {
			sig := ed25519.Sign(testKey, checkpointMessage(e.Seq, e.Hash, now))
			if _, err := pool.Exec(ctx, "INSERT INTO checkpoints (seq, head_hash, signed_at, key_id, signature) VALUES ($1, $2, $3, $4, $5)",
				e.Seq, e.Hash, now, KeyID(testKey.Public().(ed25519.PublicKey)), sig); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"entries"}, entryColumns, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "UPDATE head SET seq = 25, hash = $1", prev); err != nil {
		t.Fatal(err)
	}

	s := newService(t, Config{VerifyPageSize: 8}, pool, nil) // migration 005
	var through int64
	if err := pool.QueryRow(ctx, "SELECT through_seq FROM legacy").Scan(&through); err != nil || through != 25 {
		t.Fatalf("legacy through_seq = %d, %v", through, err)
	}
	res := verifyOK(t, s, 25)
	if res.CheckpointsChecked != 2 {
		t.Errorf("checkpoints checked = %d, want the 2 legacy ones", res.CheckpointsChecked)
	}
	// The first append turns the head into a tree over the legacy hashes; the first tree
	// checkpoint commits to all of it.
	appendAll(t, s, sampleEntries(t, "tree", 10), 5)
	cp, err := s.Checkpoint(ctx)
	if err != nil || cp == nil || cp.Seq != 35 || cp.Note == "" {
		t.Fatalf("Checkpoint = %v, %v", cp, err)
	}
	res = verifyOK(t, s, 35)
	if res.CheckpointsChecked != 3 {
		t.Errorf("checkpoints checked = %d, want 2 legacy and 1 tree", res.CheckpointsChecked)
	}
	var legacyPrev, treePrev []byte
	pool.QueryRow(ctx, "SELECT (SELECT prev_hash FROM entries WHERE seq = 25), (SELECT prev_hash FROM entries WHERE seq = 26)").Scan(&legacyPrev, &treePrev)
	if len(legacyPrev) != HashSize || treePrev != nil {
		t.Errorf("prev_hash of 25 = %x, of 26 = %x; want a chain link, then none", legacyPrev, treePrev)
	}
	// Tampering with the legacy prefix is still caught, by the chain and by the tree.
	for _, q := range []string{"ALTER TABLE ledger.entries DISABLE TRIGGER ALL", "UPDATE ledger.entries SET actor = 'mallory' WHERE seq = 3"} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	res, err = s.Verify(ctx)
	if err != nil || res.Ok || res.FirstBrokenSeq != 3 || res.Finding != "content" {
		t.Fatalf("Verify after editing legacy entry 3 = %+v, %v", res, err)
	}
	// A forger who recomputes the legacy chain from there on breaks the tree checkpoint.
	e := loadEntry(t, s, 3)
	p := e.PrevHash
	for seq := int64(3); seq <= 25; seq++ {
		e := loadEntry(t, s, seq)
		if seq == 3 {
			e.Actor = "mallory"
		}
		e.PrevHash = p
		e.Hash = chainHash(p, &e)
		p = e.Hash
		if _, err := pool.Exec(ctx, "UPDATE entries SET actor = $1, prev_hash = $2, hash = $3 WHERE seq = $4", e.Actor, e.PrevHash, e.Hash, seq); err != nil {
			t.Fatal(err)
		}
	}
	res, err = s.Verify(ctx)
	if err != nil || res.Ok || res.Finding != "fork" && res.Finding != "checkpoint" {
		t.Fatalf("Verify after rewriting the legacy chain = %+v, %v", res, err)
	}
	t.Logf("%s: %s", res.Finding, res.Problem)
}
