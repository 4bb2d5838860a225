#!/usr/bin/env bash
# Runs the baetyl master on the built-in example application in a fresh work dir (./.demo).
# Stop it with Ctrl-C: the master stops every service and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p baetyl
work="$PWD/.demo"
rm -rf "$work"
mkdir -p "$work"
bin="$PWD/target/release/baetyl"
cat <<MSG
baetyl master is starting in $work with the built-in example application:
  sensor    samples this host into the 'readings' volume ($work/var/db/baetyl/readings/readings.jsonl)
  reporter  reads that volume and reports a summary to the master API (shows in inspect)
Look at it from another terminal:
  $bin inspect -w $work            # services, pids, restarts, cpu, memory (--json for the raw API answer)
  tail -f $work/var/log/baetyl/services/*/*.log
  curl --unix-socket $work/var/run/baetyl.sock -H "x-openedge-username: baetyl-operator" \\
       -H "x-openedge-password: \$(cat $work/var/run/baetyl/operator.token)" http://baetyl/v1/system/inspect
Ctrl-C stops everything.
MSG
export BAETYL_PYTHON="$PWD/.venv/bin/python3"
exec "$bin" master -w "$work"
