#!/usr/bin/env bash
# Runs `tenure dev` on the embedded default, sends a signed joiner and a signed termination
# for a demo worker, and shows the leaver case and the audit ledger. Stops tenure at the end.
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

say "A signed termination webhook"
"$BIN/tenurectl" webhook send --type termination --worker "$worker"
say "The leaver case"
"$BIN/tenurectl" case "$worker" --wait 30s
say "The audit ledger for $worker"
"$BIN/tenurectl" ledger query --worker "$worker" --limit 200
say "Ledger verification"
"$BIN/tenurectl" ledger verify
echo
echo "Logs: $LOG. Run 'make dev' to keep tenure running."
