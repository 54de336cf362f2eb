-- Inbox: one row per message a consumer has handled, written in the same transaction as
-- the handler's work, so a redelivered message has no second effect.
CREATE TABLE inbox (
    consumer    text        NOT NULL,
    msg_id      text        NOT NULL,
    subject     text        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, msg_id)
);

-- Outbox: events written in the same transaction as the state they describe; the relay
-- publishes them with Nats-Msg-Id = id and deletes them once JetStream acknowledged.
CREATE TABLE outbox (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         text        NOT NULL UNIQUE,
    subject    text        NOT NULL,
    headers    jsonb       NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts   int         NOT NULL DEFAULT 0,
    last_error text
);
