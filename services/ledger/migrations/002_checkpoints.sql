-- Signed checkpoints: every N entries or T seconds the ledger signs (seq, hash of entry seq,
-- time) with its Ed25519 key. A forger who can rewrite the whole chain consistently (as a
-- superuser, triggers dropped) still cannot produce checkpoints that match without the key,
-- which lives outside the database. The signed bytes are documented in checkpoint.go.
CREATE TABLE checkpoints (
    seq         bigint      PRIMARY KEY CHECK (seq > 0),
    head_hash   bytea       NOT NULL CHECK (length(head_hash) = 32),
    signed_at   timestamptz NOT NULL,
    key_id      text        NOT NULL,
    signature   bytea       NOT NULL CHECK (length(signature) = 64)
);

CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION reject_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
ALTER TABLE checkpoints ENABLE ALWAYS TRIGGER checkpoints_append_only;
ALTER TABLE checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_truncate;
