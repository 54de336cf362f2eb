-- SSF transmitter state: the receivers' event streams, their subjects, and the SETs waiting
-- for push delivery or for a poll acknowledgement. Unlike the ledger's entries, all of this is
-- mutable working state, so it lives in its own schema with its own grant (see Setup).

CREATE TABLE streams (
    stream_id            text        PRIMARY KEY,
    -- The bearer token's principal that created the stream: only it may see or change it.
    owner                text        NOT NULL,
    aud                  text[]      NOT NULL,
    description          text        NOT NULL DEFAULT '',
    -- NULL: the receiver requested nothing, and gets every supported event.
    events_requested     text[],
    method               text        NOT NULL,
    endpoint_url         text        NOT NULL DEFAULT '',
    -- Sent with each push; receiver-supplied, never returned by the API nor logged.
    authorization_header text        NOT NULL DEFAULT '',
    status               text        NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'paused', 'disabled')),
    reason               text        NOT NULL DEFAULT '',
    last_verification_at timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX streams_owner_idx ON streams (owner);

-- Subjects added (included) or removed (excluded) by a receiver, keyed by a normal form of
-- the RFC 9493 identifier.
CREATE TABLE subjects (
    stream_id   text        NOT NULL REFERENCES streams ON DELETE CASCADE,
    subject_key text        NOT NULL,
    subject     jsonb       NOT NULL,
    included    boolean     NOT NULL,
    verified    boolean     NOT NULL DEFAULT false,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, subject_key)
);

-- One signed SET per stream. The jti is derived from the revocation and the stream, so a
-- revocation consumed again finds its row and queues nothing twice; a delivered row keeps
-- its jti (not its token) as that tombstone for as long as JetStream keeps the revocation.
CREATE TABLE sets (
    seq             bigserial   UNIQUE,
    stream_id       text        NOT NULL REFERENCES streams ON DELETE CASCADE,
    jti             text        NOT NULL,
    event_type      text        NOT NULL,
    token           text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text        NOT NULL DEFAULT '',
    delivered_at    timestamptz,
    failed          boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (stream_id, jti)
);
CREATE INDEX sets_pending_idx ON sets (stream_id, seq) WHERE delivered_at IS NULL AND NOT failed;
CREATE INDEX sets_due_idx ON sets (next_attempt_at) WHERE delivered_at IS NULL AND NOT failed;
