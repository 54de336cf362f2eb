-- An event's identity is its content, not only its delivery. content_key is the SHA-256 of
-- the event's canonical content key (source, worker, type, effective time, normalised
-- attributes: content.go); a second delivery of the same content under a new webhook-id
-- conflicts on it and is a duplicate of the first. Receipts written before this migration
-- have none: their events cannot be matched by content, only by webhook-id.
ALTER TABLE receipts ADD COLUMN content_key bytea;
CREATE UNIQUE INDEX receipts_content ON receipts (source, content_key) WHERE content_key IS NOT NULL;
-- A re-send recorded as a duplicate of the event its content matched (that event's ce-id).
ALTER TABLE receipts ADD COLUMN duplicate_of text;
-- Retention (Config.ReceiptRetention) deletes receipts by age.
-- BRIN: receipts arrive in time order, and a block-range index costs the insert nearly nothing.
CREATE INDEX receipts_received ON receipts USING brin (received_at);

-- What an operator should look at: HR events that changed no access although HR meant
-- something (an event for a worker who has left, a termination for a worker never seen), and
-- HRIS API answers that need a person (an employee the API no longer knows, a refused
-- credential). One open finding per kind, source and worker; a repeat counts.
CREATE TABLE findings (
    finding_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text        NOT NULL,
    source        text        NOT NULL,
    worker_id     text        NOT NULL DEFAULT '',
    event_id      text        NOT NULL DEFAULT '',
    hr_event_type text        NOT NULL DEFAULT '',
    detail        text        NOT NULL,
    status        text        NOT NULL DEFAULT 'open',   -- open|resolved
    count         bigint      NOT NULL DEFAULT 1,
    first_seen    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    resolved_at   timestamptz,
    resolved_by   text        NOT NULL DEFAULT '',
    resolution    text        NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX findings_open ON findings (kind, source, worker_id) WHERE status = 'open';
CREATE INDEX findings_worker ON findings (worker_id);

-- Why an event recorded in the history changed nothing ('' when it applied, or a stale event
-- of the time before this migration).
ALTER TABLE worker_history ADD COLUMN effect_reason text NOT NULL DEFAULT '';
