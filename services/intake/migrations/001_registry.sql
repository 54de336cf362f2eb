-- Receipts: one row per accepted webhook delivery. The primary key is the replay guard: a
-- second delivery with the same (source, webhook_id) is a duplicate, and a concurrent one
-- waits on the first one's uncommitted row until that transaction ends.
CREATE TABLE receipts (
    source       text        NOT NULL,
    webhook_id   text        NOT NULL,
    body_sha256  bytea       NOT NULL,
    event_id     text        NOT NULL UNIQUE,
    worker_id    text        NOT NULL,
    subject      text        NOT NULL,
    stream_seq   bigint,                 -- set from the PubAck before commit
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, webhook_id)
);

-- Workers: the current HR record per worker, as of the newest applied effective time.
CREATE TABLE workers (
    worker_id      text        PRIMARY KEY,
    worker_type    text        NOT NULL,
    status         text        NOT NULL,
    given_name     text        NOT NULL DEFAULT '',
    family_name    text        NOT NULL DEFAULT '',
    email          text        NOT NULL DEFAULT '',
    job_code       text        NOT NULL DEFAULT '',
    department     text        NOT NULL DEFAULT '',
    manager_id     text        NOT NULL DEFAULT '',
    location       text        NOT NULL DEFAULT '',
    start_date     text        NOT NULL DEFAULT '',
    end_date       text        NOT NULL DEFAULT '',
    sponsor_id     text        NOT NULL DEFAULT '',
    vendor_org     text        NOT NULL DEFAULT '',
    effective_time timestamptz NOT NULL,
    last_event_id  text        NOT NULL,
    source         text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workers_status ON workers (status);

-- Worker history: every accepted HR event, including stale ones that did not change the
-- current record (applied = false). Append-only.
CREATE TABLE worker_history (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker_id      text        NOT NULL,
    event_id       text        NOT NULL UNIQUE,
    source         text        NOT NULL,
    hr_event_type  text        NOT NULL,
    kind           text        NOT NULL,
    reason         text        NOT NULL DEFAULT '',
    record         jsonb       NOT NULL,
    effective_time timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    applied        boolean     NOT NULL
);

CREATE INDEX worker_history_worker ON worker_history (worker_id, effective_time);
