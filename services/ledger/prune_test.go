package ledger

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

func TestArchiveThenPrune(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t) // the superuser stands in for the schema owner
	s := newService(t, Config{Retention: time.Millisecond, VerifyPageSize: 4}, pool, nil)
	checkpoint := func() {
		t.Helper()
		if _, err := s.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	appendAll(t, s, sampleEntries(t, "a", 12), 5)
	checkpoint()
	time.Sleep(2 * time.Millisecond)
	cutoff := time.Now()
	appendAll(t, s, sampleEntries(t, "b", 8), 5)
	checkpoint()
	archive := func(before time.Time) string {
		t.Helper()
		res, err := s.Archive(ctx, &ledgerv1.ArchiveRequest{Before: timestamppb.New(before)})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir() + "/archive"
		if err := WriteBundle(dir, res.Files); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	first := archive(cutoff)
	if _, err := Prune(ctx, pool, first, s.PublicKey(), time.Hour); err == nil || !strings.Contains(err.Error(), "younger than the retention") {
		t.Fatalf("prune within retention: %v", err)
	}
	n, err := Prune(ctx, pool, first, s.PublicKey(), time.Millisecond)
	if err != nil || n != 12 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
	res, err := s.Verify(ctx)
	if err != nil || !res.Ok || res.EntriesChecked != 8 || res.PrunedThroughSeq != 12 {
		t.Fatalf("Verify after prune = %+v, %v", res, err)
	}
	if _, err := Prune(ctx, pool, first, s.PublicKey(), time.Millisecond); err == nil || !strings.Contains(err.Error(), "starts at entry 1") {
		t.Errorf("pruning the same archive twice: %v", err)
	}
	// The next archive continues from the pruned one.
	second := archive(time.Now())
	rep, err := VerifyBundle(second, s.PublicKey())
	if err != nil || rep.Manifest.FirstSeq != 13 || rep.Manifest.LastSeq != 20 {
		t.Fatalf("second archive = %+v, %v", rep, err)
	}
	if n, err := Prune(ctx, pool, second, s.PublicKey(), time.Millisecond); err != nil || n != 8 {
		t.Fatalf("second Prune = %d, %v", n, err)
	}
	appendAll(t, s, sampleEntries(t, "c", 3), 3)
	verifyOK(t, s, 3)
	// After the prunes the tree goes on from the pruned prefix's compact range: a new
	// checkpoint, an evidence bundle with inclusion proofs, and a check against an older
	// checkpoint all still work.
	var older []byte
	if err := pool.QueryRow(ctx, "SELECT note FROM checkpoints WHERE seq = 20").Scan(&older); err != nil {
		t.Fatal(err)
	}
	checkpoint()
	ev, err := s.ExportEvidence(ctx, &ledgerv1.ExportEvidenceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir() + "/evidence"
	if err := WriteBundle(dir, ev.Files); err != nil {
		t.Fatal(err)
	}
	if rep, err := VerifyBundle(dir, s.PublicKey()); err != nil || rep.Proved == 0 {
		t.Fatalf("evidence after prunes = %+v, %v", rep, err)
	}
	res, err = s.VerifyAgainst(ctx, older)
	if err != nil || !res.Ok || res.WitnessedSize != 20 || VerifyConsistency(20, res.TreeSize, res.ConsistencyProof, res.WitnessedRoot, res.HeadHash) != nil {
		t.Fatalf("VerifyAgainst(checkpoint 20) after prunes = %+v, %v", res, err)
	}
}

// Deleting recent history and recording it as a prune does not pass: the anchoring
// checkpoint is younger than the retention period, and its signature says so.
func TestVerifyCatchesFakePrune(t *testing.T) {
	ctx := context.Background()
	s := newService(t, Config{}, newPool(t), nil)
	appendAll(t, s, sampleEntries(t, "a", 10), 5)
	cp, err := s.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, s, sampleEntries(t, "b", 5), 5)
	for _, q := range []string{"ALTER TABLE ledger.entries DISABLE TRIGGER ALL", "DELETE FROM ledger.entries WHERE seq <= 10"} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// A careful forger records the tree range too (it is in the checkpoint's row).
	if _, err := s.pool.Exec(ctx, "INSERT INTO prunes (up_to_seq, hash, archive_sha256, tree_range) SELECT 10, $1, 'none', tree_range FROM checkpoints WHERE seq = 10", cp.HeadHash); err != nil {
		t.Fatal(err)
	}
	res, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ok || res.FirstBrokenSeq != 1 || !strings.Contains(res.Problem, "within the retention period") {
		t.Fatalf("Verify = %+v", res)
	}
}
