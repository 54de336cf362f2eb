-- tenure: creates the database and closes the default privileges that every role gets.
--
-- Run once as a superuser with psql (docker-compose.yml mounts it into
-- /docker-entrypoint-initdb.d/, which runs it on the first start of an empty data volume):
--   psql -v ON_ERROR_STOP=1 -d postgres -f deploy/postgres/init.sql
-- Idempotent. The service roles, their schemas and their grants come next, from
-- `tenure setup` or, without it, from roles.sql beside this file.

SELECT 'CREATE DATABASE tenure ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tenure')
\gexec

\connect tenure

-- Only the roles granted CONNECT below (roles.sql / `tenure setup`) reach this database; nobody
-- but the owner creates schemas in it, and nobody creates objects in the public schema (which
-- PostgreSQL allowed before 15). Each service writes only to the schema it owns.
REVOKE ALL ON DATABASE tenure FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
