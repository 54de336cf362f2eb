-- A revoked grant is confirmed once: when the target is first read back (at the link's
-- current generation) without it, the provisioner publishes tenure.revocation.grant_revoked
-- and sets revoke_confirmed_at, so a later read-back or a redelivered result never publishes
-- it again.
ALTER TABLE link_grants ADD COLUMN revoke_confirmed_at timestamptz;

-- Revokes that a verified read-back already reflected before this column existed were
-- reported to the approval service then: do not announce them again.
UPDATE link_grants g SET revoke_confirmed_at = g.updated_at
FROM links l
WHERE g.link_id = l.link_id AND NOT g.active AND l.observed_generation = l.generation AND l.verified_at >= g.updated_at;
