#!/usr/bin/env python3
"""baetyl's Python 3 function runtime: serves baetyl.Function/Call (Baetyl v1's protocol) over gRPC and runs
user handlers `handler(event, context)` loaded as `module.function` from each function's codedir.

Started by `baetyl runtime-python`, which validates the YAML config and passes it here as JSON. Only grpcio
is needed: FunctionMessage's seven fields are encoded here, so no generated code or protobuf version
coupling is involved. The config's `logger` section (level, format human|json, path) gives the same log lines
as every other baetyl role, with the service and instance names of the env contract.

v1 semantics: event = the JSON-decoded payload when it parses, else the raw bytes; context has messageQOS,
messageTopic, messageTimestamp, functionName, functionInvokeID and invokeid; a dict/list result is sent as
JSON, bytes as they are, str as UTF-8, None as an empty payload (nothing is published). An exception becomes
a gRPC error whose metadata names the exception type.

Callers: started by the function manager with a per-instance secret in FUNCTION_INSTANCE_SECRET, the runtime
serves only calls carrying it as `baetyl-instance-secret` metadata (compared in constant time) and removes it
from the environment before user code is loaded. A call carrying `baetyl-instance-challenge` runs nothing: it is
answered with `baetyl-instance-proof` (HMAC-SHA256 of the challenge keyed with the secret), by which the manager
knows it reached the instance it started and not a process that bound the port first. The answer also says
`baetyl-batch`: this runtime serves baetyl.FunctionBatch/CallMany (ours, not v1's), many messages in one call,
each with its own outcome, which the manager uses when calls wait for an instance (one gRPC round trip and one
pass through grpcio for the lot instead of one each).
"""
import argparse
import hashlib
import hmac
import datetime
import importlib
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures

# Until the server is up, SIGTERM/SIGINT end the process at once. In a container this program is PID 1, for
# which the kernel ignores a signal without a handler: a stop during grpcio's import (seconds under emulation)
# would otherwise wait out the engine's whole grace and end in SIGKILL. main() replaces these with the
# graceful handlers once it serves.
for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, lambda signum, _frame: os._exit(128 + signum))

import grpc  # noqa: E402  (after the early signal handlers, on purpose)

ERROR_TYPE_KEY = "baetyl-error-type"
INSTANCE_SECRET_ENV = "FUNCTION_INSTANCE_SECRET"
INSTANCE_SECRET_KEY = "baetyl-instance-secret"
# The manager's challenge to a fresh instance, and the instance's answer: HMAC-SHA256 keyed with the secret
# (the secret itself never travels to a peer that has not proved it holds it; see runtime.rs).
INSTANCE_CHALLENGE_KEY = "baetyl-instance-challenge"
INSTANCE_PROOF_KEY = "baetyl-instance-proof"
# Also in the answer to the challenge: this runtime serves baetyl.FunctionBatch/CallMany, up to MAX_BATCH
# messages at once (see runtime.rs).
BATCH_KEY = "baetyl-batch"
MAX_BATCH = 64

log = logging.getLogger("baetyl_runtime_python")

# ---------------------------------------------------------------- logging, as baetyl_sdk::logging writes it

LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "off": logging.CRITICAL + 1}


def _level(spec):
    # A tracing filter such as `info` or `debug,baetyl_hub=trace`: its bare level applies here.
    for directive in str(spec or "info").split(","):
        directive = directive.strip().lower()
        if directive and "=" not in directive:
            return LEVELS.get(directive, logging.INFO)
    return logging.INFO


class LineFormatter(logging.Formatter):
    def __init__(self, service, instance, as_json):
        super().__init__()
        self.service, self.instance, self.as_json = service, instance, as_json

    def format(self, record):
        now = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        level = {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(record.levelname, record.levelname)
        msg = record.getMessage()
        if record.exc_info:
            msg = f"{msg}\n{self.formatException(record.exc_info)}"
        if self.as_json:
            return json.dumps({"time": stamp, "level": level.lower(), "service": self.service,
                               "instance": self.instance, "target": record.name, "msg": msg},
                              separators=(",", ":"))
        return f"{stamp} {level:>5} {self.service}[{self.instance}] {msg}"


def setup_logging(logger):
    service = os.environ.get("BAETYL_SERVICE_NAME") or "runtime-python"
    instance = os.environ.get("BAETYL_SERVICE_INSTANCE_NAME") or service
    path = logger.get("path")
    if path:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(service, instance, logger.get("format") == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_level(logger.get("level")))

# ---------------------------------------------------------------- FunctionMessage wire format

FIELDS = {1: "ID", 2: "QOS", 3: "Topic", 4: "Payload", 10: "Timestamp", 11: "FunctionName", 12: "FunctionInvokeID"}


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, i):
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf):
    """(field, wire type, value) of each field of a protobuf message; one-byte varints on a fast path."""
    i, n = 0, len(buf)
    while i < n:
        key = buf[i]
        i += 1
        if key & 0x80:
            key, i = _read_varint(buf, i - 1)
        field, wire = key >> 3, key & 7
        if wire == 0 or wire == 2:
            if i >= n:
                raise ValueError("truncated field")
            value = buf[i]
            i += 1
            if value & 0x80:
                value, i = _read_varint(buf, i - 1)
            if wire == 2:
                if i + value > n:
                    raise ValueError("truncated field")
                value, i = buf[i:i + value], i + value
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def decode(buf):
    msg = {"ID": 0, "QOS": 0, "Topic": "", "Payload": b"", "Timestamp": 0, "FunctionName": "", "FunctionInvokeID": ""}
    for field, wire, value in _fields(buf):
        name = FIELDS.get(field)
        if name is None:
            continue
        if field == 10 and wire == 0:
            value = (value >> 1) ^ -(value & 1)
        elif field in (3, 11, 12) and wire == 2:
            value = value.decode("utf-8", "replace")
        msg[name] = value
    return msg


def encode(msg):
    out = bytearray()
    for field, name in FIELDS.items():
        value = msg.get(name)
        if field in (1, 2):
            if value:
                out += _varint(field << 3) + _varint(int(value))
        elif field == 10:
            if value:
                v = int(value)
                out += _varint(field << 3) + _varint(((v << 1) ^ (v >> 63)) & ((1 << 64) - 1))
        else:
            if value:
                data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                out += _varint((field << 3) | 2) + _varint(len(data)) + data
    return bytes(out)


def _bytes_field(field, data):
    return _varint((field << 3) | 2) + _varint(len(data)) + data


def decode_batch(buf):
    """FunctionBatchRequest: the messages (field 1, repeated)."""
    return [decode(value) for field, wire, value in _fields(buf) if field == 1 and wire == 2]


def encode_batch(outcomes):
    """FunctionBatchReply from (reply, error_type, error) triples: a reply, or the function's error."""
    out = bytearray()
    for reply, error_type, error in outcomes:
        inner = bytearray()
        if reply is not None:
            inner += _bytes_field(1, encode(reply))
        if error_type:
            inner += _bytes_field(2, error_type.encode("utf-8"))
        if error:
            inner += _bytes_field(3, error.encode("utf-8"))
        out += _bytes_field(1, bytes(inner))
    return bytes(out)


# ---------------------------------------------------------------- handlers

def load_functions(functions):
    loaded = {}
    for f in functions:
        codedir = os.path.abspath(f.get("codedir") or ".")
        # The function's own third-party packages: vendor/ next to the code, or a requirements.txt installed
        # into .deps/ at deploy time (pip install --target .deps -r requirements.txt).
        for extra in (os.path.join(codedir, ".deps"), os.path.join(codedir, "vendor"), codedir):
            if os.path.isdir(extra) and extra not in sys.path:
                sys.path.insert(0, extra)
        module_name, func_name = f["handler"].rsplit(".", 1)
        try:
            module = importlib.import_module(module_name)
            handler = getattr(module, func_name)
        except Exception as e:  # the whole runtime is useless without its handlers: say which and stop
            raise SystemExit(f"function {f['name']}: cannot load handler {f['handler']} from {codedir}: {type(e).__name__}: {e}")
        loaded[f["name"]] = handler
    return loaded


class FunctionFailed(Exception):
    """A call that fails: the gRPC code, the error type sent as `baetyl-error-type`, the message."""

    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


class Runtime:
    def __init__(self, functions):
        self.functions = functions

    def run(self, msg):
        """The reply to one message, or FunctionFailed."""
        handler = self.functions.get(msg["FunctionName"])
        if handler is None:
            raise FunctionFailed(grpc.StatusCode.NOT_FOUND, "UnknownFunction",
                                 f"function `{msg['FunctionName']}` is not served by this runtime")
        payload = msg["Payload"]
        try:
            event = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            event = payload
        ctx = {
            "messageQOS": msg["QOS"],
            "messageTopic": msg["Topic"],
            "messageTimestamp": msg["Timestamp"],
            "functionName": msg["FunctionName"],
            "functionInvokeID": msg["FunctionInvokeID"],
            "invokeid": msg["FunctionInvokeID"],
        }
        try:
            result = handler(event, ctx)
        except Exception as e:
            log.warning("function %s raised %s", msg["FunctionName"], type(e).__name__, exc_info=True)
            raise FunctionFailed(grpc.StatusCode.UNKNOWN, type(e).__name__, f"{type(e).__name__}: {e}")
        if result is None:
            out = b""
        elif isinstance(result, (bytes, bytearray)):
            out = bytes(result)
        elif isinstance(result, str):
            out = result.encode("utf-8")
        else:
            out = json.dumps(result).encode("utf-8")
        reply = dict(msg)
        reply["Payload"] = out
        return reply

    def call(self, request, context):
        try:
            return self.run(request)
        except FunctionFailed as f:
            context.set_trailing_metadata(((ERROR_TYPE_KEY, f.kind),))
            context.abort(f.code, f.message)

    def call_many(self, requests, context):
        """baetyl.FunctionBatch/CallMany (ours, not v1's): each message as Call would run it, in order."""
        if len(requests) > MAX_BATCH:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(requests)} messages in one batch; at most {MAX_BATCH}")
        outcomes = []
        for msg in requests:
            try:
                outcomes.append((self.run(msg), "", ""))
            except FunctionFailed as f:
                outcomes.append((None, f.kind, f.message))
        return outcomes


class RequireSecret(grpc.ServerInterceptor):
    """Refuses every call that does not carry the instance secret."""

    def __init__(self, secret):
        self.secret = secret.encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "this function instance serves only the function manager that started it: "
                          f"`{INSTANCE_SECRET_KEY}` is missing or wrong")

        self.deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        got = b""
        challenge = None
        for key, value in details.invocation_metadata or ():
            value = value.encode() if isinstance(value, str) else value
            if key == INSTANCE_SECRET_KEY:
                got = value
            elif key == INSTANCE_CHALLENGE_KEY:
                challenge = value
        if challenge is not None:
            # Answered here: no function ever runs on a challenge.
            return self.prove(instance_proof(self.secret, challenge))
        if hmac.compare_digest(got, self.secret):
            return continuation(details)
        return self.deny

    @staticmethod
    def prove(proof):
        def answer(request, context):
            context.set_trailing_metadata(((INSTANCE_PROOF_KEY, proof), (BATCH_KEY, str(MAX_BATCH))))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "instance proof: no function runs on a challenge")

        return grpc.unary_unary_rpc_method_handler(answer)


def instance_proof(secret, challenge):
    """HMAC-SHA256(secret, "baetyl-instance-proof:" + challenge) as hex, as runtime.rs computes it."""
    return hmac.new(secret, b"baetyl-instance-proof:" + challenge, hashlib.sha256).hexdigest()


def main():
    parser = argparse.ArgumentParser(prog="baetyl runtime-python")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--config-json", required=True)
    args = parser.parse_args(sys.argv[1:])
    config = json.loads(args.config_json)
    setup_logging(config.get("logger") or {})
    # Read, then hidden from user code (and from the processes it may start).
    secret = os.environ.pop(INSTANCE_SECRET_ENV, "")
    runtime = Runtime(load_functions(config["functions"]))
    handler = grpc.method_handlers_generic_handler(
        "baetyl.Function",
        {"Call": grpc.unary_unary_rpc_method_handler(runtime.call, request_deserializer=decode, response_serializer=encode)},
    )
    batch_handler = grpc.method_handlers_generic_handler(
        "baetyl.FunctionBatch",
        {"CallMany": grpc.unary_unary_rpc_method_handler(runtime.call_many, request_deserializer=decode_batch,
                                                         response_serializer=encode_batch)},
    )
    interceptors = (RequireSecret(secret),) if secret else ()
    if not secret:
        log.warning("no %s: any caller is served", INSTANCE_SECRET_ENV)
    # v1's `server` section, resolved by `baetyl runtime-python`: message size, workers, concurrent calls, grace.
    srv = config.get("server") or {}
    if srv.get("ignored"):
        log.warning("ignored %s: %s", ", ".join(srv["ignored"]), srv.get("ignored_reason", ""))
    length = int(srv.get("max_message_length") or 4 * 1024 * 1024)
    # gRPC's default SO_REUSEPORT would let another process bind the same port and take a share of the calls.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=int(srv.get("workers") or 4)),
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", length),
            ("grpc.max_receive_message_length", length),
        ],
        maximum_concurrent_rpcs=int(srv.get("concurrent") or 0) or None,
    )
    server.add_generic_rpc_handlers((handler, batch_handler))
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"cannot listen on {args.listen}")
    server.start()
    log.info("serving %s on %s", ", ".join(runtime.functions), args.listen)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    grace = srv.get("grace")
    server.stop(grace=2 if grace is None else float(grace)).wait()


if __name__ == "__main__":
    main()
