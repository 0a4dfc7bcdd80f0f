#!/usr/bin/env bash
# The OS packages the distributed stack needs (scripts/start_stack.sh): Redis and PostgreSQL 15
# from Debian, and libfaketime (Debian `faketime`) for the clock-skew fault test (a worker 5 s
# ahead). Installs only what is missing, only as root with apt-get; never fails: without them
# the stack says what is missing and its tests skip with that reason.
set -uo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql-15)
compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || compgen -G "/usr/lib/faketime/libfaketimeMT.so.1" \
  >/dev/null || missing+=(faketime)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${missing[*]} missing and not installable here (needs root + apt-get); the stack tests will skip"
  exit 0
fi
echo "installing ${missing[*]} for the distributed stack..."
if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}") >/dev/null 2>&1; then
  # another Debian release ships another PostgreSQL major: take its default one
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server postgresql faketime) \
    >/dev/null 2>&1 || echo "note: could not install ${missing[*]}; the stack tests will skip"
fi
# the Debian packages start their own system services: the stack runs its own instances, on its own ports
for unit in redis-server postgresql; do
  command -v service >/dev/null 2>&1 && service "$unit" stop >/dev/null 2>&1 || true
done
exit 0
