-- tenure: one login role per service, each owning only its own schema; and the demo target's
-- role (the "postgres" connector manages PostgreSQL roles as accounts).
--
-- `tenure setup` does the same (passwords from TENURE_DB_PASSWORD_INTAKE, _APPROVAL,
-- _PROVISIONER, _LEDGER, _TARGET). Without it, a DBA runs this file as a superuser (or a role
-- with CREATEROLE that may create schemas) in database tenure, after init.sql:
--
--   psql -v ON_ERROR_STOP=1 -d tenure \
--     -v intake_password="$TENURE_DB_PASSWORD_INTAKE" \
--     -v approval_password="$TENURE_DB_PASSWORD_APPROVAL" \
--     -v provisioner_password="$TENURE_DB_PASSWORD_PROVISIONER" \
--     -v ledger_password="$TENURE_DB_PASSWORD_LEDGER" \
--     -v target_password="$TENURE_DB_PASSWORD_TARGET" \
--     -f deploy/postgres/roles.sql
--
-- Idempotent: run it again to rotate passwords or repair ownership and grants.
--
-- Model
--   role                schema       may
--   tenure_intake       intake       everything in intake (owner: runs its own migrations)
--   tenure_approval     approval     everything in approval
--   tenure_provisioner  provisioner  everything in provisioner
--   tenure_ledger       ledger       INSERT and SELECT on its entries only; the schema belongs to
--                                    tenure_ledger_owner (NOLOGIN), as which `tenure setup` migrates
--                       ssf          read and write on the Shared Signals transmitter's streams,
--                                    subjects and pending SETs (working state, a separate grant);
--                                    also owned by tenure_ledger_owner
--   tenure_target       (none)       CREATEROLE: create, disable (NOLOGIN) and drop the demo
--                                    target's account roles and end their sessions
-- No role has rights in another service's schema; none may create in public; services talk
-- through NATS, not through each other's tables.

\set ON_ERROR_STOP on
SET client_min_messages = warning;

\if :{?intake_password}
\else
  \warn 'roles.sql: set -v intake_password=...'
  SELECT 1/0 AS missing_intake_password;
\endif
\if :{?approval_password}
\else
  \warn 'roles.sql: set -v approval_password=...'
  SELECT 1/0 AS missing_approval_password;
\endif
\if :{?provisioner_password}
\else
  \warn 'roles.sql: set -v provisioner_password=...'
  SELECT 1/0 AS missing_provisioner_password;
\endif
\if :{?ledger_password}
\else
  \warn 'roles.sql: set -v ledger_password=...'
  SELECT 1/0 AS missing_ledger_password;
\endif
\if :{?target_password}
\else
  \warn 'roles.sql: set -v target_password=...'
  SELECT 1/0 AS missing_target_password;
\endif

DO $$
BEGIN
  IF current_database() <> 'tenure' THEN
    RAISE EXCEPTION 'roles.sql must run in database tenure, not %', current_database();
  END IF;
END
$$;

BEGIN;

-- Same hardening as init.sql, in case the database was made some other way.
REVOKE ALL ON DATABASE tenure FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Roles.
SELECT format('CREATE ROLE %I', r)
FROM unnest(ARRAY['tenure_intake', 'tenure_approval', 'tenure_provisioner', 'tenure_ledger', 'tenure_target']) AS r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r)
\gexec

ALTER ROLE tenure_intake      WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD :'intake_password';
ALTER ROLE tenure_approval    WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD :'approval_password';
ALTER ROLE tenure_provisioner WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD :'provisioner_password';
ALTER ROLE tenure_ledger      WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD :'ledger_password';
ALTER ROLE tenure_target      WITH LOGIN NOSUPERUSER NOCREATEDB CREATEROLE   NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 10 PASSWORD :'target_password';

-- Unqualified names resolve to the service's own schema.
ALTER ROLE tenure_intake      SET search_path = intake;
ALTER ROLE tenure_approval    SET search_path = approval;
ALTER ROLE tenure_provisioner SET search_path = provisioner;
ALTER ROLE tenure_ledger      SET search_path = ledger;

-- Schemas, each owned by its service's role and closed to everyone else.
CREATE SCHEMA IF NOT EXISTS intake      AUTHORIZATION tenure_intake;
CREATE SCHEMA IF NOT EXISTS approval    AUTHORIZATION tenure_approval;
CREATE SCHEMA IF NOT EXISTS provisioner AUTHORIZATION tenure_provisioner;
-- The ledger's schema belongs to a NOLOGIN owner, so the ledger's own role can never drop or
-- disable its append-only triggers; `tenure setup` migrates it as that owner and grants
-- tenure_ledger INSERT and SELECT only.
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tenure_ledger_owner') THEN
    CREATE ROLE tenure_ledger_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
  END IF;
END $$;
GRANT tenure_ledger_owner TO CURRENT_USER;
CREATE SCHEMA IF NOT EXISTS ledger      AUTHORIZATION tenure_ledger_owner;
-- The ledger's SSF transmitter keeps its mutable state apart from the append-only entries.
CREATE SCHEMA IF NOT EXISTS ssf         AUTHORIZATION tenure_ledger_owner;
ALTER SCHEMA intake      OWNER TO tenure_intake;
ALTER SCHEMA approval    OWNER TO tenure_approval;
ALTER SCHEMA provisioner OWNER TO tenure_provisioner;
ALTER SCHEMA ledger      OWNER TO tenure_ledger_owner;
ALTER SCHEMA ssf         OWNER TO tenure_ledger_owner;
REASSIGN OWNED BY tenure_ledger TO tenure_ledger_owner;
REVOKE ALL ON SCHEMA intake, approval, provisioner, ledger, ssf FROM PUBLIC;

-- Connect: the services and the target's role only (PUBLIC's default CONNECT is revoked above,
-- so accounts that the demo target creates cannot log in to tenure's database).
GRANT CONNECT, TEMPORARY ON DATABASE tenure TO tenure_intake, tenure_approval, tenure_provisioner, tenure_ledger;
GRANT CONNECT ON DATABASE tenure TO tenure_target;

COMMIT;

-- The target's connector (pkg/connectors/pgrole) ends the sessions of accounts it disables
-- (pg_terminate_backend), which needs pg_signal_backend. (Making it a member of each role it
-- creates, createrole_self_grant, would work too, but would hand it the data privileges of
-- every group it grants.) pg_signal_backend can also end tenure's own services' sessions, and
-- before PostgreSQL 16 CREATEROLE may alter any non-superuser role: outside a demo, point the
-- connector at the target system's own PostgreSQL cluster, not at tenure's.
GRANT pg_signal_backend TO tenure_target;
