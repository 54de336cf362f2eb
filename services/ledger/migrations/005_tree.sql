-- The ledger becomes an RFC 6962 Merkle tree (see tree.go). Entries already recorded stay as
-- they are, a legacy prefix: their hash column is the old chain hash, checked as a chain, and
-- it is their leaf in the tree. Entries appended from now on have no prev_hash and
-- hash = SHA-256(0x00 || canonical(entry)).
ALTER TABLE entries ALTER COLUMN prev_hash DROP NOT NULL;

-- The entries 1..through_seq were chained before the tree (0: none).
CREATE TABLE legacy (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    through_seq bigint  NOT NULL CHECK (through_seq >= 0)
);
INSERT INTO legacy (through_seq) SELECT seq FROM head;
CREATE TRIGGER legacy_append_only BEFORE UPDATE OR DELETE ON legacy
    FOR EACH ROW EXECUTE FUNCTION reject_change();
CREATE TRIGGER legacy_no_truncate BEFORE TRUNCATE ON legacy
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
ALTER TABLE legacy ENABLE ALWAYS TRIGGER legacy_append_only;
ALTER TABLE legacy ENABLE ALWAYS TRIGGER legacy_no_truncate;

-- head.hash is the tree's root hash; tree_range its compact range (the hashes of the perfect
-- subtrees that make up [0, seq), left to right), which the appender extends. NULL until the
-- first append after this migration, which computes it from the legacy entries' hashes.
ALTER TABLE head ADD COLUMN tree_range bytea;

-- Tree checkpoints are C2SP tlog-checkpoint signed notes: seq is the tree size, head_hash the
-- root, signature the Ed25519 signature in the note. note is NULL for the legacy checkpoints
-- of the chain (seq, hash of entry seq). tree_range is the compact range at seq (its root is
-- head_hash, so it cannot be forged without a hash collision): the signer starts from it.
ALTER TABLE checkpoints ADD COLUMN note text, ADD COLUMN tree_range bytea;

-- A prune keeps the compact range of the pruned entries, so the rest of the tree can still
-- be computed (NULL for a prune of a legacy chain).
ALTER TABLE prunes ADD COLUMN tree_range bytea;
