package ledger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Prune deletes the entries an archive holds, once they are older than retention. It runs as
// the owner of the ledger schema (owner: connected as the owner, search_path ledger), never
// as the ledger's run-time role, which cannot delete. It checks first that:
//
//   - the archive verifies with pub (the ledger's public key) and is a tenure.archive.v1;
//   - its checkpoint is this ledger's, signed longer than retention ago;
//   - it starts where the chain now starts (entry 1, or after the previous prune) and its end
//     is the stored entry at the checkpoint's sequence.
//
// In one transaction it then disables the append-only trigger, deletes the entries up to
// the checkpoint, re-enables the trigger and records the prune, which Verify uses as the
// chain's new anchor. Store the archive (WORM storage) before pruning. It returns how many
// entries were deleted.
func Prune(ctx context.Context, owner *pgxpool.Pool, archiveDir string, pub ed25519.PublicKey, retention time.Duration) (int64, error) {
	if pub == nil {
		return 0, errors.New("ledger: prune: the ledger's public key is required")
	}
	if retention <= 0 {
		retention = DefaultRetention
	}
	rep, err := VerifyBundle(archiveDir, pub)
	if err != nil {
		return 0, fmt.Errorf("ledger: prune: the archive does not verify: %w", err)
	}
	m := rep.Manifest
	if m.Format != ArchiveFormat {
		return 0, fmt.Errorf("ledger: prune: %s is a %s bundle, not an archive", archiveDir, m.Format)
	}
	cp, err := m.Checkpoint.checkpoint()
	if err != nil {
		return 0, err
	}
	if age := time.Since(cp.SignedAt.AsTime()); age < retention {
		return 0, fmt.Errorf("ledger: prune: the archive ends at checkpoint %d, signed %s ago: younger than the retention period (%s)", cp.Seq, age.Round(time.Second), retention)
	}
	mb, err := os.ReadFile(filepath.Join(archiveDir, "manifest.json"))
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256(mb)
	var n int64
	err = pgx.BeginFunc(ctx, owner, func(tx pgx.Tx) error {
		// One pruner at a time, and no Verify sees the chain half pruned.
		if _, err := tx.Exec(ctx, "LOCK TABLE prunes IN EXCLUSIVE MODE"); err != nil {
			return err
		}
		var storedHash, storedSig []byte
		if err := tx.QueryRow(ctx, "SELECT head_hash, signature FROM checkpoints WHERE seq = $1", cp.Seq).Scan(&storedHash, &storedSig); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("the archive's checkpoint %d is not in this ledger", cp.Seq)
			}
			return err
		}
		if !bytes.Equal(storedHash, cp.HeadHash) || !bytes.Equal(storedSig, cp.Signature) {
			return fmt.Errorf("the archive's checkpoint %d differs from this ledger's", cp.Seq)
		}
		var (
			upTo      int64
			upHash    []byte
			upRange   []byte
			entryHash []byte
		)
		err := tx.QueryRow(ctx, "SELECT up_to_seq, hash, tree_range FROM prunes ORDER BY up_to_seq DESC LIMIT 1").Scan(&upTo, &upHash, &upRange)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if m.FirstSeq != upTo+1 {
			return fmt.Errorf("the archive starts at entry %d, but the ledger now starts at %d", m.FirstSeq, upTo+1)
		}
		if upTo > 0 && upTo <= m.LegacyThrough && !bytes.Equal(rep.FirstPrev, upHash) {
			return fmt.Errorf("the archive does not continue the previous prune (entry %d)", upTo)
		}
		if !slices.Equal(hexRange(upRange), m.PrefixRange) {
			return fmt.Errorf("the archive's tree does not continue the previous prune (entry %d)", upTo)
		}
		// The entries in the database must be the archived ones: same tree (or, for a legacy
		// checkpoint, the same hash at its sequence).
		base, err := manifestRange(&m)
		if err != nil {
			return err
		}
		tree, err := rangeFromHashes(ctx, tx, upTo, base, cp.Seq)
		if err != nil {
			return fmt.Errorf("the ledger's entries %d..%d: %w", upTo+1, cp.Seq, err)
		}
		if !tree.Equal(rep.Range) {
			return fmt.Errorf("the ledger's entries %d..%d differ from the archive's", upTo+1, cp.Seq)
		}
		if err := tx.QueryRow(ctx, "SELECT hash FROM entries WHERE seq = $1", cp.Seq).Scan(&entryHash); err != nil {
			return fmt.Errorf("entry %d: %w", cp.Seq, err)
		}
		if cp.Note == "" && !bytes.Equal(entryHash, cp.HeadHash) {
			return fmt.Errorf("entry %d in the ledger does not match the archive's checkpoint", cp.Seq)
		}
		var keep []byte
		if tree.Begin() == 0 {
			keep = encodeRange(tree)
		}
		if _, err := tx.Exec(ctx, "ALTER TABLE entries DISABLE TRIGGER entries_append_only"); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "DELETE FROM entries WHERE seq <= $1", cp.Seq)
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		if _, err := tx.Exec(ctx, "ALTER TABLE entries ENABLE ALWAYS TRIGGER entries_append_only"); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO prunes (up_to_seq, hash, archive_sha256, tree_range) VALUES ($1, $2, $3, $4)", cp.Seq, entryHash, hex.EncodeToString(sum[:]), keep)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ledger: prune: %w", err)
	}
	return n, nil
}
