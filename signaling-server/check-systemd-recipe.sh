#!/usr/bin/env bash
# Checks the systemd recipe of docs/DEPLOY.md (section 3) on this machine: the files laid out
# exactly as DEPLOY.md says, `systemd-analyze verify` on the unit, and the unit's own ExecStart run
# as an unprivileged user (uid 65534, like systemd's DynamicUser) with the secrets systemd would
# read from EnvironmentFile= and the state directory StateDirectory= would make.
#
# It does not touch the real system: everything happens in a private mount and network namespace
# (tmpfs over /etc/aparte and /usr/local/bin, its own loopback), so it runs next to a real
# installation without disturbing it. It creates /etc/aparte as an empty mount point if missing
# and removes it again.
#
# Usage (as root):  bash signaling-server/check-systemd-recipe.sh [path/to/aparte-signaling]
# Default binary: $CARGO_TARGET_DIR (or target)/release/aparte-signaling, else .../debug/.
# Needs: systemd (systemd-analyze), util-linux (unshare, setpriv), iproute2, curl, openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=deploy/aparte-signaling.service

if [ "${1:-}" != "--inside" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "error: run as root (it uses unshare, mount and setpriv)" >&2; exit 2; }
  for tool in systemd-analyze setpriv unshare ip curl openssl; do
    command -v "$tool" >/dev/null || {
      echo "error: $tool is missing (apt-get install systemd util-linux iproute2 curl openssl)" >&2
      exit 2
    }
  done
  target=${CARGO_TARGET_DIR:-target}
  bin=${1:-}
  if [ -z "$bin" ]; then
    for b in "$target/release/aparte-signaling" "$target/debug/aparte-signaling"; do
      [ -x "$b" ] && { bin=$b; break; }
    done
  fi
  [ -n "$bin" ] && [ -x "$bin" ] || {
    echo "error: no aparte-signaling binary; build it (cargo build --release -p aparte-signaling-server) or pass its path" >&2
    exit 2
  }
  made_mountpoint=0
  if [ ! -e /etc/aparte ]; then mkdir /etc/aparte; made_mountpoint=1; fi
  status=0
  unshare --mount --net --propagation private bash "$0" --inside "$(realpath "$bin")" || status=$?
  if [ "$made_mountpoint" = 1 ]; then rmdir /etc/aparte; fi
  exit "$status"
fi

# --- inside the namespaces -------------------------------------------------------------------
bin=$2
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

mount -t tmpfs -o mode=0755 tmpfs /etc/aparte
mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin
ip link set lo up
work=$(mktemp -d)
chmod 0755 "$work"   # the service user must reach the state directory inside it
trap 'rm -rf "$work"' EXIT

echo "== DEPLOY.md section 3, verbatim (binary: $bin)"
cp "$bin" "$work/aparte-signaling"   # stands in for target/release/aparte-signaling
(
  set -x
  install -m 0755 "$work/aparte-signaling" /usr/local/bin/
  install -d -m 0755 /etc/aparte
  install -m 0644 deploy/signaling.toml /etc/aparte/signaling.toml
)
# Not traced: the secrets would show.
echo "+ umask 077; printf 'APARTE_TOKEN_SECRET=%s\nAPARTE_TURN_SECRET=%s\n' \"\$(openssl rand -hex 32)\" \"\$(openssl rand -hex 32)\" > /etc/aparte/secrets.env"
(
  umask 077
  printf 'APARTE_TOKEN_SECRET=%s\nAPARTE_TURN_SECRET=%s\n' \
    "$(openssl rand -hex 32)" "$(openssl rand -hex 32)" > /etc/aparte/secrets.env
)
ls -ld /etc/aparte /etc/aparte/*

echo "== systemd-analyze verify $unit"
if out=$(systemd-analyze verify "$unit" 2>&1) && [ -z "$out" ]; then
  pass "systemd-analyze verify: no complaint"
else
  fail "systemd-analyze verify: $out"
fi
echo "== systemd-analyze security --offline=yes $unit (exposure; lower is better)"
systemd-analyze security --offline=yes "$unit" 2>&1 | tail -1 || true

# ExecStart exactly as the unit has it (no systemd specifiers or variables in it).
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
echo "== ExecStart: $exec_start"
# What StateDirectory=aparte + StateDirectoryMode=0700 + DynamicUser=yes give the service.
state=$work/var-lib-aparte
install -d -m 0700 -o 65534 -g 65534 "$state"

# Runs ExecStart as uid/gid 65534 with no groups, UMask=0077, the environment systemd builds
# (EnvironmentFile= read as root, here by this root shell; STATE_DIRECTORY), and waits for it to
# listen. $1: "with-turn-secret" or "without-turn-secret". Output in $work/{out,err}.
start_service() {
  local env=(PATH=/usr/bin:/bin STATE_DIRECTORY="$state")
  local token turn
  token=$(sed -n 's/^APARTE_TOKEN_SECRET=//p' /etc/aparte/secrets.env)
  turn=$(sed -n 's/^APARTE_TURN_SECRET=//p' /etc/aparte/secrets.env)
  env+=(APARTE_TOKEN_SECRET="$token")
  [ "$1" = with-turn-secret ] && env+=(APARTE_TURN_SECRET="$turn")
  # shellcheck disable=SC2086 # ExecStart is split into words, as systemd does
  (umask 0077; exec setpriv --reuid=65534 --regid=65534 --clear-groups \
    env -i "${env[@]}" $exec_start) >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 200); do   # up to 20 s on a loaded machine
    grep -q '^listening on http://127.0.0.1:8443$' "$work/out" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

stop_service() {
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] && pass "SIGTERM: stopped with status 0" || fail "SIGTERM: exit status $rc"
}

echo "== run 1: ExecStart as uid 65534, secrets from secrets.env"
if start_service with-turn-secret; then
  pass "reads /etc/aparte/signaling.toml and listens: $(tr '\n' ';' <"$work/out")"
  [ "$(curl -s --max-time 5 http://127.0.0.1:8443/healthz)" = ok ] \
    && pass "GET /healthz on 127.0.0.1:8443: ok" || fail "/healthz"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:8443/metrics)
  [ "$code" = 404 ] && pass "GET /metrics on the public port: 404" || fail "/metrics on 8443: $code"
  # Captured first: `curl | grep -q` could fail under pipefail when grep exits early.
  metrics=$(curl -s --max-time 5 http://127.0.0.1:9090/metrics || true)
  grep -q '^aparte_signaling_connections ' <<<"$metrics" \
    && pass "GET /metrics on 127.0.0.1:9090: Prometheus text" || fail "metrics on 9090"
  grep -q 'TURN secret: from the environment (APARTE_TURN_SECRET)' "$work/err" \
    && pass "log: TURN secret: from the environment" || fail "TURN secret origin not logged"
  stop_service
else
  fail "did not start: $(cat "$work/err")"
  kill "$pid" 2>/dev/null || true
fi

echo "== runs 2 and 3: no APARTE_TURN_SECRET: generated once in the state directory, then reused"
if start_service without-turn-secret; then
  grep -q "TURN secret: generated and saved in $state/turn-secret" "$work/err" \
    && pass "run 2: TURN secret generated and saved in \$STATE_DIRECTORY/turn-secret" \
    || fail "run 2: $(grep -o 'TURN secret[^"]*' "$work/err")"
  stop_service
  perms=$(stat -c '%a %u' "$state/turn-secret")
  [ "$perms" = "600 65534" ] && pass "turn-secret: mode 600, owned by the service user" \
    || fail "turn-secret: mode/owner $perms"
  if start_service without-turn-secret; then
    grep -q "TURN secret: loaded from $state/turn-secret" "$work/err" \
      && pass "run 3: TURN secret loaded from the state directory" || fail "run 3: not loaded"
    stop_service
  else
    fail "run 3 did not start: $(cat "$work/err")"
  fi
else
  fail "run 2 did not start: $(cat "$work/err")"
fi

echo "== control: the old recipe (/etc/aparte 0750, signaling.toml 0640 root) must fail"
chmod 0750 /etc/aparte
chmod 0640 /etc/aparte/signaling.toml
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/bin:/bin $exec_start \
  >/dev/null 2>"$work/err" || rc=$?
if [ "$rc" = 2 ] && grep -q 'cannot read config file /etc/aparte/signaling.toml: Permission denied' "$work/err"; then
  pass "old recipe: exit 2, $(cat "$work/err")"
else
  fail "old recipe: expected exit 2 and a permission error, got $rc: $(cat "$work/err")"
fi

echo
if [ "$fails" = 0 ]; then echo "systemd recipe: all checks passed"; else echo "systemd recipe: $fails check(s) FAILED"; exit 1; fi
