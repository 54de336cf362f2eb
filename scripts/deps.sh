#!/usr/bin/env bash
# What `make test` needs besides Go, installed when missing. `make test` runs it first.
#
# Assumes a fresh Debian (bookworm or newer) or Ubuntu machine with Go, bash and apt-get.
# Checks: PostgreSQL server binaries (initdb, pg_ctl), OpenLDAP slapd + ldap-utils, Node.js +
# npm, runuser (util-linux), git; then the npm packages of every test/*/package.json.
# Idempotent: what is present is left alone, so a second run does nothing and prints one line.
#
# System packages are installed with apt-get when this runs as root or sudo works without a
# password; otherwise it stops and prints the one command to run. Services the packages would
# start (a PostgreSQL cluster on 5432, slapd on 389) are kept from starting: the tests start
# private servers on their own ports.
#
# Knobs (also what the tests of this script use):
#   TENURE_DEPS_PATH     where to look for programs (default: $PATH:/usr/sbin:/sbin)
#   TENURE_DEPS_PGLIB    where Debian puts PostgreSQL's versioned bin dirs (default /usr/lib/postgresql)
#   TENURE_DEPS_INSTALL  auto (default) or never: never only reports what is missing
set -euo pipefail
cd "$(dirname "$0")/.."

search_path=${TENURE_DEPS_PATH:-$PATH:/usr/sbin:/sbin}
pglib=${TENURE_DEPS_PGLIB:-/usr/lib/postgresql}
install_mode=${TENURE_DEPS_INSTALL:-auto}

have() { PATH=$search_path command -v "$1" >/dev/null 2>&1; }
have_pg() { compgen -G "$pglib/*/bin/initdb" >/dev/null || { have initdb && have pg_ctl; }; }

missing=()
have_pg || missing+=(postgresql)
have slapd || missing+=(slapd)
have ldapsearch || missing+=(ldap-utils)
have node || missing+=(nodejs)
have npm || missing+=(npm)
have runuser || missing+=(util-linux)
have git || missing+=(git)

apt_cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing[*]}"

can_install() {
  [ "$install_mode" = auto ] || return 1
  [ "$(id -u)" -eq 0 ] && return 0
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null
}

if [ ${#missing[@]} -gt 0 ]; then
  if ! can_install; then
    echo "deps: missing system packages: ${missing[*]}" >&2
    echo "deps: run this once, then make test again:" >&2
    echo "  sudo sh -c '$apt_cmd'" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  echo "deps: installing ${missing[*]}"
  log=$(mktemp "${TMPDIR:-/tmp}/tenure-deps.XXXXXX")
  # policy-rc.d exiting 101 tells package scripts "do not start services now".
  policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    added=1
  fi
  rc=0
  $SUDO sh -c "$apt_cmd" >"$log" 2>&1 || rc=$?
  [ -z "$added" ] || $SUDO rm -f "$policy"
  if [ "$rc" -ne 0 ]; then
    tail -n 50 "$log" >&2
    echo "deps: apt-get failed (log: $log)" >&2
    exit "$rc"
  fi
  rm -f "$log"
  # An image that already ran a system cluster: stop it, the tests use their own.
  if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
    $SUDO service postgresql stop >/dev/null 2>&1 || true
  fi
fi

if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "deps: running as root needs the 'postgres' OS user for the test clusters; run: apt-get install -y postgresql" >&2
  exit 1
fi

# npm packages of the test servers (the SCIM server): npm ci when node_modules is missing or
# older than the lock file. No privileges needed.
for dir in test/*/; do
  [ -f "$dir/package.json" ] || continue
  stamp="$dir/node_modules/.package-lock.json"
  if [ -f "$stamp" ] && { [ ! -f "$dir/package-lock.json" ] || [ "$stamp" -nt "$dir/package-lock.json" ]; }; then
    continue
  fi
  if ! have npm; then
    echo "deps: npm is missing, needed for $dir" >&2
    exit 1
  fi
  echo "deps: npm ci in $dir"
  (cd "$dir" && PATH=$search_path npm ci --no-audit --no-fund --loglevel=error)
done

echo "deps: ok (PostgreSQL, slapd, ldap-utils, node/npm, test npm packages)"
