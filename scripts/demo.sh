#!/usr/bin/env bash
# Runs `tenure dev` on the embedded default, sends a signed joiner and a signed termination
# for a demo worker, and shows the leaver case and the audit ledger, and (with psql) one demo
# login in PostgreSQL itself before and after. Stops tenure at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./bin
DATA=${TENURE_DEMO_DIR:-.tenure/dev}
HTTP=${TENURE_DEMO_HTTP:-127.0.0.1:8080}
GRPC=${TENURE_DEMO_GRPC:-127.0.0.1:9090}
LOG=$DATA/tenure-dev.log
mkdir -p "$DATA"
export TENURECTL_CONFIG=$DATA/tenurectl.yaml

"$BIN/tenure" dev --data-dir "$DATA" --http-addr "$HTTP" --grpc-addr "$GRPC" --nats-port -1 >"$DATA/tenure-dev.out" 2>"$LOG" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if "$BIN/tenure" healthcheck --url "http://$HTTP/readyz" 2>/dev/null; then break; fi
  if ! kill -0 $pid 2>/dev/null; then echo "tenure dev exited:"; cat "$LOG"; exit 1; fi
  sleep 0.5
done
cat "$DATA/tenure-dev.out"

worker="w-demo-$(date +%s)"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "A signed joiner webhook: $worker, job code RN"
"$BIN/tenurectl" webhook send --type hire --worker "$worker" --job-code RN \
  --given-name Ada --family-name Lovelace --email "ada@clinic.example" --department nursing
sleep 1
say "Accounts created in the demo targets (read back from each target)"
"$BIN/tenurectl" accounts "$worker"
say "Grants (the EHR package waits for approvers: default deny)"
"$BIN/tenurectl" grants --worker "$worker"

# The demo targets are real PostgreSQL logins. Look at one in PostgreSQL itself, not through
# tenure, and keep a session of it open across the termination.
PGURL=$(awk '$1 == "Postgres" {print $2}' "$DATA/tenure-dev.out")
PSQL=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -n 1 || true)
role=""
if [ -n "$PSQL" ] && [ -n "$PGURL" ]; then
  user=$("$BIN/tenurectl" accounts "$worker" | awk '$1 == "demo-intranet" {print $2}')
  role="intranet_$user"
  # The dev cluster trusts loopback connections, so the demo can log in as the new role; to
  # the "postgres" database, as tenure's own is closed to other roles.
  roleURL=${PGURL/postgres@/$role@}
  roleURL=${roleURL/\/tenure\?//postgres?}
  say "In PostgreSQL itself: the login $role, and a session of it left open"
  "$PSQL" "$PGURL" -c "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = '$role'"
  "$PSQL" "$roleURL" -At -c "SELECT 'session ' || pg_backend_pid() || ' open as ' || current_user" -c "SELECT pg_sleep(60)" \
    >"$DATA/demo-session.out" 2>&1 &
  session=$!
  for _ in $(seq 1 20); do grep -q "open as" "$DATA/demo-session.out" && break; sleep 0.25; done
  sed 's/^/  /' "$DATA/demo-session.out"
fi

say "A signed termination webhook"
"$BIN/tenurectl" webhook send --type termination --worker "$worker"
say "The leaver case"
"$BIN/tenurectl" case "$worker" --wait 30s
if [ -n "$role" ]; then
  say "In PostgreSQL itself again: $role can no longer log in, and its open session was ended"
  "$PSQL" "$PGURL" -c "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = '$role'"
  wait "$session" 2>/dev/null || true
  grep -E "open as|FATAL" "$DATA/demo-session.out" | sed 's/^/  session: /' || true
  "$PSQL" "$roleURL" -c "SELECT 1" 2>&1 | sed 's/^/  new login: /' || true
fi
say "The audit ledger for $worker"
"$BIN/tenurectl" ledger query --worker "$worker" --limit 200
say "Ledger verification"
"$BIN/tenurectl" ledger verify
echo
echo "Logs: $LOG. Run 'make dev' to keep tenure running."
