#!/usr/bin/env bash
# End to end through the real cron daemon: apply the role on localhost with a
# schedule two minutes ahead, wait for cron to fire `repobackup run`, check the
# manifest it published started inside the scheduled minute, restore that
# backup under a new name with `repobackup import` and compare its rows with
# the source database, then remove the server again (state absent).
# The server has a splay (autobackup_splay_minutes) and a lock wait: it is
# scheduled its offset before the target minute, so cron must fire at the
# effective time, and a lock held into that minute makes the run wait for it
# (autobackup_lock_wait) instead of skipping.
#
# Needs scripts/setup-test-env first (venv, collection path, cron running).
# Takes about 2-3 minutes, most of it waiting for the minute to come.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
# shellcheck source=/dev/null
. "$REPO_ROOT/build/env.sh"
# cron schedules in the system's local time; so must we.
unset TZ

SERVER=cron_e2e
BASE="$(mktemp -d /tmp/reposerver-cron-e2e.XXXXXX)"
SQLITE_ROOT="$BASE/sqlite"
DEST="$BASE/backups"
WORK="$BASE/ansible"
POLL_SECONDS="${CRON_E2E_POLL_SECONDS:-200}"

say() { printf 'cron_e2e: %s\n' "$*"; }
fail() { printf 'cron_e2e: FAIL: %s\n' "$*" >&2; exit 1; }

mkdir -p "$SQLITE_ROOT" "$WORK"
chmod 0755 "$BASE"

cat >"$WORK/hosts.yml" <<EOF
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: /usr/bin/python3
EOF
cat >"$WORK/apply.yml" <<'EOF'
---
- name: Apply the autobackup role for the cron end-to-end test
  hosts: localhost
  gather_facts: true
  roles:
    - role: reposerver.backup.autobackup
EOF

apply_role() {
    # $1: state; the rest: extra ansible-playbook arguments
    local state="$1"
    shift
    ansible-playbook -i "$WORK/hosts.yml" "$WORK/apply.yml" \
        -e "autobackup_state=$state" -e "@$WORK/vars.json" "$@"
}

cleanup() {
    local rc=$?
    set +e
    if [ -f "$WORK/vars.json" ]; then
        say "removing server $SERVER (state absent)"
        if ! apply_role absent >"$WORK/absent.log" 2>&1; then
            cat "$WORK/absent.log" >&2
            say "FAIL: removing the server with state absent failed"
            [ "$rc" -eq 0 ] && rc=1
        elif [ -e "/etc/cron.d/repobackup_$SERVER" ] || [ -e "/etc/repobackup/$SERVER.json" ]; then
            say "FAIL: state absent left /etc/cron.d/repobackup_$SERVER or /etc/repobackup/$SERVER.json"
            [ "$rc" -eq 0 ] && rc=1
        fi
    fi
    rm -rf "$BASE" "/var/lib/repobackup/$SERVER" /var/log/repobackup/"$SERVER".log*
    exit "$rc"
}
trap cleanup EXIT

pgrep -x cron >/dev/null || fail "cron is not running (scripts/setup-test-env starts it)"

/usr/bin/python3 - "$SQLITE_ROOT/gamma.db" <<'EOF'
import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as db:
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    db.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"gamma-{i}") for i in range(1, 11)])
EOF

# The minute that starts between 60 and 120 seconds from now.
target_epoch=$(( ( $(date +%s) / 60 + 2 ) * 60 ))
target_hhmm="$(date -d "@$target_epoch" +%H:%M)"
# The splay offset the engine gives this host id and server (schedule.splay_offset); the time set is that
# many minutes before the target minute, where the cron file must put it.
HOST_ID=cron-e2e.example.test
offset="$(PYTHONPATH="$REPO_ROOT/build/collections" python - "$SERVER" "$HOST_ID" <<'EOF'
import sys
from ansible_collections.reposerver.backup.plugins.module_utils import schedule, settings
server, host_id = sys.argv[1:]
print(schedule.splay_offset(settings.validate({"destination": "/x", "server_name": server, "host_id": host_id,
                                               "splay_minutes": 3})))
EOF
)"
[ "$offset" -gt 0 ] || fail "host id $HOST_ID has splay offset $offset; pick one with an offset"
set_hhmm="$(date -d "@$(( target_epoch - offset * 60 ))" +%H:%M)"
/usr/bin/python3 - "$WORK/vars.json" "$SERVER" "$SQLITE_ROOT" "$DEST" "$set_hhmm" "$HOST_ID" <<'EOF'
import json, sys
path, server, root, dest, hhmm, host_id = sys.argv[1:]
with open(path, "w", encoding="utf-8") as handle:
    json.dump({
        "autobackup_server_name": server,
        "autobackup_kind": "sqlite",
        "autobackup_sqlite_root": root,
        "autobackup_destination": dest,
        "autobackup_times": [hhmm],
        "autobackup_keep_last": 3,
        "autobackup_host_id": host_id,
        "autobackup_splay_minutes": 3,
        "autobackup_lock_wait": 60,
    }, handle)
EOF

say "scheduling $SERVER at $set_hhmm plus a splay of $offset minutes: $target_hhmm (host local time)"
apply_role present
now=$(date +%s)
if [ "$now" -ge $(( target_epoch - 2 )) ]; then
    fail "applying the role took until $(date -d "@$now" +%T); the $target_hhmm run could be missed"
fi
grep -q "repobackup run --server $SERVER" "/etc/cron.d/repobackup_$SERVER" \
    || fail "/etc/cron.d/repobackup_$SERVER does not run 'repobackup run --server $SERVER'"
grep -Eq "^$(date -d "@$target_epoch" +%-M) $(date -d "@$target_epoch" +%-H) \* \* \* root .* run --server $SERVER" \
    "/etc/cron.d/repobackup_$SERVER" || fail "/etc/cron.d/repobackup_$SERVER does not run at $target_hhmm"
# A run in progress until 15 s into the target minute: the scheduled run waits for it (lock_wait 60).
release_epoch=$(( target_epoch + 15 ))
flock "/var/lib/repobackup/$SERVER/lock" sleep $(( release_epoch - $(date +%s) )) &

say "waiting for cron (up to ${POLL_SECONDS}s)"
deadline=$(( $(date +%s) + POLL_SECONDS ))
manifest=""
while [ "$(date +%s)" -lt "$deadline" ]; do
    manifest="$(find "$DEST" -path "*/$SERVER/gamma.db/*.manifest.json" -type f 2>/dev/null | head -n 1)"
    [ -n "$manifest" ] && break
    sleep 5
done
if [ -z "$manifest" ]; then
    say "no manifest; what there is:"
    find "$BASE" /var/lib/repobackup/"$SERVER" -maxdepth 5 2>/dev/null | sed 's/^/  /' >&2 || true
    tail -n 20 "/var/log/repobackup/$SERVER.log" >&2 2>/dev/null || true
    fail "cron did not publish a manifest of gamma.db within ${POLL_SECONDS}s of $target_hhmm"
fi
say "manifest $manifest"

grep -q "reason='already running'" "/var/log/repobackup/$SERVER.log" \
    && fail "the scheduled run was skipped as already running instead of waiting for the lock"
/usr/bin/python3 - "$manifest" "$target_epoch" "$release_epoch" <<'EOF'
import json, sys
from datetime import datetime, timezone
path, target, release = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
manifest = json.load(open(path, encoding="utf-8"))
start = datetime.fromisoformat(manifest["start"].replace("Z", "+00:00"))
if start.tzinfo is None:
    sys.exit(f"cron_e2e: FAIL: manifest start {manifest['start']!r} has no UTC offset")
window = (datetime.fromtimestamp(target, timezone.utc), datetime.fromtimestamp(target + 60, timezone.utc))
if not window[0] <= start < window[1]:
    sys.exit(f"cron_e2e: FAIL: manifest start {start.isoformat()} is outside the scheduled minute "
             f"{window[0].isoformat()} .. {window[1].isoformat()}")
print(f"cron_e2e: start {start.isoformat()} is inside the scheduled minute")
if start < datetime.fromtimestamp(release - 1, timezone.utc):
    sys.exit(f"cron_e2e: FAIL: the backup began at {start.isoformat()}, before the lock held into the minute "
             "was released: the run did not wait for it")
print("cron_e2e: the run waited for the lock, then backed up")
EOF
RESTORED=gamma_restored.db
say "restoring $manifest as $RESTORED"
/usr/local/sbin/repobackup import "$manifest" --server "$SERVER" --repository "$RESTORED" \
    || fail "repobackup import of $manifest as $RESTORED failed"
[ -f "$SQLITE_ROOT/$RESTORED" ] || fail "repobackup import left no $SQLITE_ROOT/$RESTORED"
/usr/bin/python3 - "$SQLITE_ROOT/gamma.db" "$SQLITE_ROOT/$RESTORED" <<'EOF'
import sqlite3, sys
def rows(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    finally:
        db.close()
source, restored = rows(sys.argv[1]), rows(sys.argv[2])
if len(source) != 10:
    sys.exit(f"cron_e2e: FAIL: the source gamma.db holds {len(source)} rows, not 10")
if restored != source:
    sys.exit(f"cron_e2e: FAIL: the restored copy differs from gamma.db ({len(restored)} rows against {len(source)})")
print(f"cron_e2e: the restored copy holds the same {len(source)} rows as gamma.db")
EOF
say "PASS"
