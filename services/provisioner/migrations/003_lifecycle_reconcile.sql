-- A termination HR rescinds closes the open case (status 'rescinded') or marks a completed one.
ALTER TABLE cases ADD COLUMN rescinded_at timestamptz;

-- Deletions: where a target's policy sets delete_after, a leaver's disabled account is deleted
-- after that grace period. due_at is stored so the schedule survives restarts. The link stays
-- (desired_state 'absent') as the username's tombstone.
CREATE TABLE deletions (
    deletion_id  text PRIMARY KEY,
    link_id      text        NOT NULL REFERENCES links,
    worker_id    text        NOT NULL,
    connector    text        NOT NULL,
    case_id      text        NOT NULL DEFAULT '',
    status       text        NOT NULL DEFAULT 'scheduled', -- scheduled | issued | deleted | cancelled
    due_at       timestamptz NOT NULL,
    scheduled_at timestamptz NOT NULL DEFAULT now(),
    issued_at    timestamptz,
    generation   bigint      NOT NULL DEFAULT 0, -- the link generation the delete was issued at
    completed_at timestamptz,
    reason       text        NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX deletions_pending_link ON deletions (link_id) WHERE status IN ('scheduled', 'issued');
CREATE INDEX deletions_due ON deletions (due_at) WHERE status = 'scheduled';
CREATE INDEX deletions_worker ON deletions (worker_id);

-- Reconciliation runs per connector; the newest finished run schedules the next.
CREATE TABLE reconcile_runs (
    run_id       text PRIMARY KEY,
    connector    text        NOT NULL,
    trigger      text        NOT NULL, -- manual | schedule
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    accounts     int         NOT NULL DEFAULT 0,
    findings     int         NOT NULL DEFAULT 0,
    new_findings int         NOT NULL DEFAULT 0,
    resolved     int         NOT NULL DEFAULT 0,
    disabled     int         NOT NULL DEFAULT 0,
    error        text        NOT NULL DEFAULT ''
);
CREATE INDEX reconcile_runs_connector ON reconcile_runs (connector, started_at DESC);

-- Findings: one row per (connector, kind, account) while it is seen; a run that no longer
-- sees it resolves it. A finding seen again after it resolved is a new row.
CREATE TABLE findings (
    finding_id     text PRIMARY KEY,
    connector      text        NOT NULL,
    kind           text        NOT NULL, -- orphan | shared | drift
    username       text        NOT NULL,
    account_id     text        NOT NULL DEFAULT '',
    worker_ids     text[]      NOT NULL DEFAULT '{}',
    link_id        text        NOT NULL DEFAULT '',
    detail         text        NOT NULL DEFAULT '',
    entitlements   text[]      NOT NULL DEFAULT '{}',
    observed_state text        NOT NULL DEFAULT 'unknown',
    status         text        NOT NULL DEFAULT 'open', -- open | resolved
    first_seen     timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz,
    run_id         text        NOT NULL,
    disable_issued boolean     NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX findings_open ON findings (connector, kind, username) WHERE status = 'open';
CREATE INDEX findings_list ON findings (connector, status, last_seen DESC);
