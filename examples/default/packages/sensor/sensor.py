#!/usr/bin/env python3
"""Samples the host every INTERVAL seconds and appends one JSON line to /data/readings.jsonl
(the `readings` volume, linked into this instance's work dir as ./data)."""
import json
import os
import signal
import sys
import time

running = True


def stop(_sig, _frame):
    global running
    running = False


def cpu_temperature():
    # Boards expose thermal zones in millidegrees; hosts without one report none.
    try:
        with open("/sys/class/thermal/thermal_zone0/temp") as f:
            return int(f.read().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def meminfo():
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) * 1024
    return fields


def main():
    signal.signal(signal.SIGTERM, stop)
    interval = float(os.environ.get("INTERVAL", "2"))
    os.makedirs("data", exist_ok=True)
    name = os.environ.get("BAETYL_SERVICE_INSTANCE_NAME", "sensor")
    print(f"{name}: sampling every {interval}s into data/readings.jsonl", flush=True)
    seq = 0
    while running:
        seq += 1
        mem = meminfo()
        reading = {
            "seq": seq,
            "time": time.time(),
            "load1": os.getloadavg()[0],
            "mem_available": mem.get("MemAvailable", 0),
            "cpu_temp": cpu_temperature(),
        }
        with open("data/readings.jsonl", "a") as f:
            f.write(json.dumps(reading) + "\n")
        time.sleep(interval)
    print(f"{name}: stopped after {seq} readings", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
