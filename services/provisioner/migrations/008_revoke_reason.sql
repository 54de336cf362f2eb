-- Why a grant was revoked (the approval decision's reason, e.g. "leaver: termination"). A
-- grant revoked for a termination that HR then rescinded is confirmed to approval but
-- announces no grant_revoked revocation: the worker was reinstated (finish.go).
ALTER TABLE link_grants ADD COLUMN revoke_reason text NOT NULL DEFAULT '';
