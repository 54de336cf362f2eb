-- Scheduled events: HR events accepted with an effective time in the future. They are held
-- here (their receipt is already recorded, so a retry is a duplicate) and applied to the
-- registry and published through the outbox by Run once their time comes; held rows survive
-- restarts. A termination_rescinded cancels the pending terminations of its worker.
CREATE TABLE scheduled_events (
    event_id       text        PRIMARY KEY,
    source         text        NOT NULL,
    source_event_id text       NOT NULL,   -- webhook-id (or adapter-derived id)
    worker_id      text        NOT NULL,
    hr_event_type  text        NOT NULL,
    event          jsonb       NOT NULL,   -- the canonical HREvent as validated
    headers        jsonb       NOT NULL,   -- trace context of the delivery
    effective_time timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    state          text        NOT NULL DEFAULT 'scheduled',  -- scheduled|fired|cancelled|failed
    error          text        NOT NULL DEFAULT '',
    done_at        timestamptz
);

CREATE INDEX scheduled_events_due ON scheduled_events (effective_time) WHERE state = 'scheduled';
CREATE INDEX scheduled_events_worker ON scheduled_events (worker_id, effective_time);

-- Snapshots: one row per roster received on POST /snapshots/{source} or Reconcile; the key
-- is the replay guard, like receipts for webhooks.
CREATE TABLE snapshots (
    source      text        NOT NULL,
    snapshot_id text        NOT NULL,
    body_sha256 bytea       NOT NULL,
    as_of       timestamptz NOT NULL,
    summary     jsonb       NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (source, snapshot_id)
);

-- Contract ends and ListWorkers filters.
CREATE INDEX workers_end_date ON workers (end_date) WHERE end_date <> '' AND status <> 'terminated';
CREATE INDEX workers_department ON workers (department);
CREATE INDEX workers_manager ON workers (manager_id);
