-- Failed attempts per link and generation, so the attempt budget of a command (the target's
-- max_attempts before it is dead-lettered) survives restarts: a redelivered command, or the
-- one the start-up re-drive issues, goes on counting from here instead of starting afresh.
-- An operator's retry clears the link's rows.
CREATE TABLE attempt_budget (
    link_id    text   NOT NULL REFERENCES links,
    generation bigint NOT NULL,
    failures   int    NOT NULL DEFAULT 0,
    PRIMARY KEY (link_id, generation)
);
