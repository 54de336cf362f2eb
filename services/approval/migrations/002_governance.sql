-- Governance: who the worker reports to (approvers), third-party data, request stages,
-- time-boxed grants, break-glass reviews, vendor BAAs, policy versions and access reviews.
ALTER TABLE workers
    ADD COLUMN worker_type text NOT NULL DEFAULT '',
    ADD COLUMN manager_id  text NOT NULL DEFAULT '',
    ADD COLUMN sponsor_id  text NOT NULL DEFAULT '',
    ADD COLUMN vendor_org  text NOT NULL DEFAULT '',
    ADD COLUMN end_date    date;

ALTER TABLE grants
    ADD COLUMN kind                text NOT NULL DEFAULT 'role', -- role, request, jit, breakglass
    ADD COLUMN expires_at          timestamptz,
    ADD COLUMN reapprove_by        timestamptz,
    ADD COLUMN revoke_confirmed_at timestamptz,
    ADD COLUMN sod_exception       text NOT NULL DEFAULT '';
CREATE INDEX grants_expiry ON grants (expires_at) WHERE revoked_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX grants_reapprove ON grants (reapprove_by) WHERE revoked_at IS NULL AND reapprove_by IS NOT NULL;

ALTER TABLE requests
    ADD COLUMN kind          text NOT NULL DEFAULT 'role', -- role, request, jit, reapproval
    ADD COLUMN system        text NOT NULL DEFAULT '',
    ADD COLUMN requested_by  text NOT NULL DEFAULT '',
    ADD COLUMN justification text NOT NULL DEFAULT '',
    ADD COLUMN end_time      timestamptz,
    ADD COLUMN grant_id      text NOT NULL DEFAULT '',
    ADD COLUMN sod_rule      text NOT NULL DEFAULT '';

-- One row per approval stage, decided in order. approvers: worker ids, or 'role:security'.
CREATE TABLE request_stages (
    request_id text        NOT NULL REFERENCES requests,
    seq        int         NOT NULL,
    stage      text        NOT NULL,
    approvers  text[]      NOT NULL DEFAULT '{}',
    status     text        NOT NULL DEFAULT 'pending', -- pending, approved, denied
    decided_by text        NOT NULL DEFAULT '',
    decided_at timestamptz,
    comment    text        NOT NULL DEFAULT '',
    PRIMARY KEY (request_id, seq)
);

CREATE TABLE breakglass (
    review_id          text PRIMARY KEY,
    grant_id           text        NOT NULL UNIQUE,
    worker_id          text        NOT NULL,
    reason_code        text        NOT NULL,
    justification      text        NOT NULL DEFAULT '',
    invoked_by         text        NOT NULL,
    due_at             timestamptz NOT NULL,
    overdue_alerted_at timestamptz,
    reviewed_by        text        NOT NULL DEFAULT '',
    reviewed_at        timestamptz,
    comment            text        NOT NULL DEFAULT ''
);

CREATE TABLE vendor_baas (
    vendor_org  text PRIMARY KEY,
    reference   text        NOT NULL,
    expires_at  timestamptz,
    recorded_by text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Each policy version that became the one deciding; its hash also goes to the ledger.
CREATE TABLE policy_versions (
    seq         bigserial PRIMARY KEY,
    policy_hash text        NOT NULL,
    path        text        NOT NULL DEFAULT '',
    loaded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE review_campaigns (
    campaign_id       text PRIMARY KEY,
    system            text        NOT NULL,
    status            text        NOT NULL, -- open, closed
    started_by        text        NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    deadline          timestamptz NOT NULL,
    revoke_unanswered boolean     NOT NULL DEFAULT false,
    escalated_at      timestamptz,
    closed_at         timestamptz
);
CREATE INDEX review_campaigns_system ON review_campaigns (system, started_at);

CREATE TABLE review_items (
    campaign_id  text        NOT NULL REFERENCES review_campaigns,
    grant_id     text        NOT NULL,
    worker_id    text        NOT NULL,
    package      text        NOT NULL,
    reviewer     text        NOT NULL,
    decision     text        NOT NULL DEFAULT '', -- '', keep, revoke
    comment      text        NOT NULL DEFAULT '',
    decided_by   text        NOT NULL DEFAULT '',
    decided_at   timestamptz,
    escalated_at timestamptz,
    PRIMARY KEY (campaign_id, grant_id)
);
CREATE INDEX review_items_grant ON review_items (grant_id);
