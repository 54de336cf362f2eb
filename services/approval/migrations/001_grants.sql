-- What the approval service knows of each worker: enough to decide, in effective-time order.
CREATE TABLE workers (
    worker_id      text PRIMARY KEY,
    status         text        NOT NULL,
    job_code       text        NOT NULL DEFAULT '',
    effective_time timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- A grant is an approved package held by a worker. Rows are never deleted: a revoked grant
-- keeps who approved it and why it ended.
CREATE TABLE grants (
    grant_id      text PRIMARY KEY,
    worker_id     text        NOT NULL,
    system        text        NOT NULL,
    package       text        NOT NULL,
    connector     text        NOT NULL,
    entitlements  text[]      NOT NULL DEFAULT '{}',
    role          text        NOT NULL DEFAULT '',
    request_id    text        NOT NULL DEFAULT '',
    approvals     jsonb       NOT NULL DEFAULT '[]',
    policy_hash   text        NOT NULL,
    granted_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    revoke_reason text
);
CREATE UNIQUE INDEX grants_active ON grants (worker_id, package) WHERE revoked_at IS NULL;
CREATE INDEX grants_system ON grants (system);

-- Requests wait for approvals (default deny): nothing is granted before they complete.
CREATE TABLE requests (
    request_id  text PRIMARY KEY,
    worker_id   text        NOT NULL,
    package     text        NOT NULL,
    role        text        NOT NULL DEFAULT '',
    status      text        NOT NULL, -- pending, approved, denied, cancelled
    reason      text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    closed_at   timestamptz
);
CREATE UNIQUE INDEX requests_pending ON requests (worker_id, package) WHERE status = 'pending';
