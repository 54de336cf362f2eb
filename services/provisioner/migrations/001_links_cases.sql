-- Workers as the provisioner last saw them (effective-time ordered).
CREATE TABLE workers (
    worker_id      text PRIMARY KEY,
    status         text        NOT NULL,
    email          text        NOT NULL DEFAULT '',
    given_name     text        NOT NULL DEFAULT '',
    family_name    text        NOT NULL DEFAULT '',
    effective_time timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- An account link ties a worker to one account in one target. Links are never deleted, so
-- the unique (connector, username) also keeps a username from being reused for anyone else.
-- desired_* is what tenure wants; observed_* is what the last read-back showed. generation
-- grows with every change of desired state, so a late command never undoes a newer one.
CREATE TABLE links (
    link_id              text PRIMARY KEY,
    worker_id            text        NOT NULL,
    connector            text        NOT NULL,
    username             text        NOT NULL,
    account_id           text        NOT NULL DEFAULT '',
    origin               text        NOT NULL DEFAULT 'provisioned', -- provisioned | reconciled
    desired_state        text        NOT NULL, -- enabled | disabled
    desired_entitlements text[]      NOT NULL DEFAULT '{}',
    generation           bigint      NOT NULL DEFAULT 1,
    observed_state       text        NOT NULL DEFAULT 'unknown',
    observed_generation  bigint      NOT NULL DEFAULT 0,
    observed_entitlements text[]     NOT NULL DEFAULT '{}',
    verified_at          timestamptz,
    attempts             int         NOT NULL DEFAULT 0,
    last_error           text        NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connector, username)
);
CREATE INDEX links_worker ON links (worker_id);

-- Grants the approval service decided, per link: the desired entitlements are their union.
CREATE TABLE link_grants (
    grant_id     text PRIMARY KEY,
    link_id      text        NOT NULL REFERENCES links,
    entitlements text[]      NOT NULL,
    active       boolean     NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- A leaver case covers every link the worker had when it opened (and any found later).
CREATE TABLE cases (
    case_id       text PRIMARY KEY,
    worker_id     text        NOT NULL,
    hr_event_id   text        NOT NULL,
    status        text        NOT NULL, -- open | completed
    opened_at     timestamptz NOT NULL DEFAULT now(),
    deadline      timestamptz NOT NULL,
    completed_at  timestamptz,
    overdue_alerted_at timestamptz
);
CREATE UNIQUE INDEX cases_open ON cases (worker_id) WHERE status = 'open';

CREATE TABLE case_accounts (
    case_id        text        NOT NULL REFERENCES cases,
    link_id        text        NOT NULL REFERENCES links,
    generation     bigint      NOT NULL,
    status         text        NOT NULL DEFAULT 'pending', -- pending | verified
    attempts       int         NOT NULL DEFAULT 0,
    last_error     text        NOT NULL DEFAULT '',
    observed_state text        NOT NULL DEFAULT 'unknown',
    verified_at    timestamptz,
    PRIMARY KEY (case_id, link_id)
);
