-- Prunes: entries 1..up_to_seq were archived (tenure.archive.v1, archive_sha256 = SHA-256 of
-- its manifest.json) and deleted by the schema owner (ledger.Prune). Verify then checks the
-- chain from up_to_seq + 1, anchored on the signed checkpoint at up_to_seq, which must be older
-- than the retention period.
CREATE TABLE prunes (
    up_to_seq      bigint      PRIMARY KEY CHECK (up_to_seq > 0),
    hash           bytea       NOT NULL CHECK (length(hash) = 32),
    archive_sha256 text        NOT NULL,
    pruned_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER prunes_append_only BEFORE UPDATE OR DELETE ON prunes
    FOR EACH ROW EXECUTE FUNCTION reject_change();
CREATE TRIGGER prunes_no_truncate BEFORE TRUNCATE ON prunes
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
ALTER TABLE prunes ENABLE ALWAYS TRIGGER prunes_append_only;
ALTER TABLE prunes ENABLE ALWAYS TRIGGER prunes_no_truncate;
