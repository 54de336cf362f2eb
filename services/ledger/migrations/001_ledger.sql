-- The ledger: every tenure event, recorded once, in one hash chain.
--
-- seq is gapless and assigned by the appender while it holds the head row locked, so any
-- number of ledger replicas extend one chain. hash = SHA-256(prev_hash || canonical(entry));
-- the canonical encoding is documented in chain.go and covers every column but hash.
CREATE TABLE entries (
    seq         bigint      PRIMARY KEY CHECK (seq > 0),
    -- CloudEvents ce-id ("stream:<stream seq>" without one): one event is one entry, however
    -- often it is redelivered or re-driven.
    msg_id      text        NOT NULL UNIQUE,
    subject     text        NOT NULL,
    type        text        NOT NULL,
    source      text        NOT NULL,
    worker_id   text        NOT NULL,
    system      text        NOT NULL,
    actor       text        NOT NULL,
    event_time  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    stream_seq  bigint      NOT NULL,
    -- Envelope headers without volatile transport headers (Nats-*, dead-letter bookkeeping).
    headers     jsonb       NOT NULL,
    payload     bytea       NOT NULL,
    prev_hash   bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash        bytea       NOT NULL CHECK (length(hash) = 32),
    trace_id    text        NOT NULL
);

-- Indexed on a bounded prefix: a btree entry must stay under ~2.7 kB, and an oversized
-- header must never stop the ledger from recording an event.
CREATE INDEX entries_worker_idx     ON entries (left(worker_id, 512), seq);
CREATE INDEX entries_subject_idx    ON entries (left(subject, 512) text_pattern_ops);
CREATE INDEX entries_event_time_idx ON entries (event_time);

-- The end of the chain. Appenders lock this one row FOR UPDATE, which serializes them.
CREATE TABLE head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint  NOT NULL,
    hash bytea   NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on %.% is not allowed', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION reject_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
-- ALWAYS: the triggers fire even under session_replication_role = replica.
ALTER TABLE entries ENABLE ALWAYS TRIGGER entries_append_only;
ALTER TABLE entries ENABLE ALWAYS TRIGGER entries_no_truncate;

-- The head only moves forward.
CREATE FUNCTION head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.one AND NEW.seq > OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the ledger is append-only: % on %.% is not allowed (the head only moves forward)', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER head_forward_only BEFORE UPDATE OR DELETE ON head
    FOR EACH ROW EXECUTE FUNCTION head_forward_only();
CREATE TRIGGER head_no_truncate BEFORE TRUNCATE ON head
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
ALTER TABLE head ENABLE ALWAYS TRIGGER head_forward_only;
ALTER TABLE head ENABLE ALWAYS TRIGGER head_no_truncate;
