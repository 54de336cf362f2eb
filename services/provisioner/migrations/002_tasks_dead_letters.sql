-- Manual tasks: work a person does in a system without an API. A link has at most one open
-- task; a newer decision supersedes it. The attestation (completed_by, completed_at,
-- evidence) is the task's read-back: the manual connector reads the account's state from the
-- latest completed task, so nothing counts as done until someone attested it.
CREATE TABLE tasks (
    task_id              text PRIMARY KEY,
    connector            text        NOT NULL,
    link_id              text        NOT NULL REFERENCES links,
    worker_id            text        NOT NULL,
    username             text        NOT NULL,
    operation            text        NOT NULL, -- create | enable | disable | delete | entitlements
    -- What the account must look like when the task is done (the link's desired state at
    -- the task's generation); an attestation makes it the observed state.
    desired_state        text        NOT NULL,
    desired_entitlements text[]      NOT NULL DEFAULT '{}',
    generation           bigint      NOT NULL,
    case_id              text        NOT NULL DEFAULT '',
    instructions         text        NOT NULL DEFAULT '',
    status               text        NOT NULL DEFAULT 'open', -- open | completed | superseded
    created_at           timestamptz NOT NULL DEFAULT now(),
    deadline             timestamptz NOT NULL,
    overdue_alerted_at   timestamptz,
    completed_at         timestamptz,
    completed_by         text        NOT NULL DEFAULT '',
    evidence             text        NOT NULL DEFAULT '',
    evidence_sha256      text        NOT NULL DEFAULT '',
    evidence_file_name   text        NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX tasks_open_link ON tasks (link_id) WHERE status = 'open';
CREATE INDEX tasks_open_deadline ON tasks (deadline) WHERE status = 'open';
CREATE INDEX tasks_completed_link ON tasks (link_id, completed_at DESC) WHERE status = 'completed';

-- Dead letters of the provisioner's consumers, copied from the TENURE_DLQ stream (which
-- stays the untouched record) so operators can list, filter and re-drive them. id is the
-- message's sequence in TENURE_DLQ.
CREATE TABLE dead_letters (
    id          bigint PRIMARY KEY,
    consumer    text        NOT NULL,
    connector   text        NOT NULL DEFAULT '',
    subject     text        NOT NULL,
    headers     jsonb       NOT NULL,
    data        bytea       NOT NULL,
    error       text        NOT NULL DEFAULT '',
    delivered   int         NOT NULL DEFAULT 0,
    dead_at     timestamptz NOT NULL,
    worker_id   text        NOT NULL DEFAULT '',
    link_id     text        NOT NULL DEFAULT '',
    command_id  text        NOT NULL DEFAULT '',
    case_id     text        NOT NULL DEFAULT '',
    status      text        NOT NULL DEFAULT 'open', -- open | retried
    retried_by  text        NOT NULL DEFAULT '',
    retried_at  timestamptz
);
CREATE INDEX dead_letters_open ON dead_letters (connector, id) WHERE status = 'open';
