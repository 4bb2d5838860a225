#!/usr/bin/env python3
"""Every INTERVAL seconds, summarises /data/readings.jsonl and reports it to the master
(PUT /v1/services/{svc}/instances/{inst}/report), authenticated with the service's token."""
import http.client
import json
import os
import signal
import socket
import sys
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("baetyl")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def connection():
    address = os.environ["BAETYL_MASTER_API_ADDRESS"]
    if address.startswith("unix://"):
        return UnixConnection(address[len("unix://"):])
    host, port = address[len("tcp://"):].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port))


def summary(path):
    count, last = 0, None
    try:
        with open(path) as f:
            for line in f:
                count += 1
                last = line
    except FileNotFoundError:
        pass
    out = {"readings": count}
    if last:
        r = json.loads(last)
        out.update({"last_load1": r["load1"], "last_mem_available": r["mem_available"], "last_cpu_temp": r["cpu_temp"]})
    return out


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    interval = float(os.environ.get("INTERVAL", "5"))
    service = os.environ["BAETYL_SERVICE_NAME"]
    instance = os.environ["BAETYL_SERVICE_INSTANCE_NAME"]
    headers = {
        "x-openedge-username": service,
        "x-openedge-password": os.environ["BAETYL_SERVICE_TOKEN"],
        "content-type": "application/json",
    }
    while True:
        body = json.dumps(summary("data/readings.jsonl"))
        conn = connection()
        conn.request("PUT", f"/v1/services/{service}/instances/{instance}/report", body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            print(f"report refused: {resp.status}", file=sys.stderr, flush=True)
            return 1
        print(f"reported {body}", flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
