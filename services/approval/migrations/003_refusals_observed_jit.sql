-- Refused requests (policy refuses them outright: BAA, SoD, sponsor, end date) are kept, one
-- open per worker and package, so they are visible and evaluated again when that changes.
ALTER TABLE requests ADD COLUMN refused_rule     text   NOT NULL DEFAULT '',  -- baa, sod, sponsor, end_date
                     ADD COLUMN duration_seconds bigint NOT NULL DEFAULT 0;  -- JIT length, counted from the grant
CREATE UNIQUE INDEX requests_refused ON requests (worker_id, package) WHERE status = 'refused';

-- What each account in a target held when the provisioner last read it back (tenure.result),
-- so ExplainAccess compares the grants with the target.
CREATE TABLE observed_accounts (
    worker_id    text        NOT NULL,
    connector    text        NOT NULL,
    username     text        NOT NULL,
    state        text        NOT NULL,
    entitlements text[]      NOT NULL DEFAULT '{}',
    outcome      text        NOT NULL,
    error        text        NOT NULL DEFAULT '',
    observed_at  timestamptz NOT NULL,
    PRIMARY KEY (worker_id, connector, username)
);
