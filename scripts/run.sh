#!/usr/bin/env bash
# Runs the baetyl master on the built-in example application in a fresh work dir (./.demo): the MQTT hub on
# port 1883, a timer publishing readings, and an SQL and a Python function wired by rules.
# Stop it with Ctrl-C: the master stops every service and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p baetyl
if (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    echo "run: port 1883 is already in use (another MQTT broker?); stop it first: the example hub listens there" >&2
    exit 1
fi
work="$PWD/.demo"
rm -rf "$work"
mkdir -p "$work"
bin="$PWD/target/release/baetyl"
cat <<MSG
baetyl master is starting in $work with the built-in example application:
  hub               MQTT on tcp://127.0.0.1:1883 (user demo / demo-password)
  timer             publishes {"id": N, "time": T} on sensor/data every 2 s
  function-manager  sensor/data -> SQL "select id, time, topic() ... where id % 3 = 0" -> sensor/filtered
                    sensor/data -> Python index.handler -> sensor/python
Watch the results from another terminal:
  mosquitto_sub -h 127.0.0.1 -p 1883 -u demo -P demo-password -t 'sensor/#' -v
  mosquitto_pub -h 127.0.0.1 -p 1883 -u demo -P demo-password -t sensor/data -m '{"id": 9, "time": 0}'
  $bin inspect -w $work            # services, instances, pids, restarts, cpu, memory (--json: raw API)
  tail -f $work/var/log/baetyl/services/*/*.log
Ctrl-C stops everything.
MSG
export BAETYL_PYTHON="$PWD/.venv/bin/python3"
export BAETYL_NODE_MODULES="$PWD/services/function/runtimes/node/node_modules"
exec "$bin" master -w "$work"
