-- WatchRevocations reads the revocations in ledger order from a cursor: a partial index keeps
-- that a short range scan however large the rest of the ledger grows.
CREATE INDEX entries_revocations_idx ON entries (seq) WHERE subject LIKE 'tenure.revocation.%';
