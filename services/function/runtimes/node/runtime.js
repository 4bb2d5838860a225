'use strict';
/*
 * baetyl's Node.js function runtime: serves baetyl.Function/Call (Baetyl v1's protocol) over gRPC and runs
 * user handlers loaded as `module.function` from each function's codedir, with v1's Node runtime semantics
 * (the images `baetyl-function-node8`, `-node85`, `-node`).
 *
 * Started by `baetyl runtime-node`, which validates the YAML config, passes it here as JSON with the
 * Function proto's text, and runs this program embedded in the binary (`node -e`), with NODE_PATH naming the
 * directory of its third-party modules (@grpc/grpc-js, @grpc/proto-loader, protobufjs; scripts/setup.sh
 * installs them with `npm ci` from package-lock.json: nothing is downloaded at run time).
 *
 * v1 semantics: a handler is `handler(event, context, callback)`; `callback(err, result)` answers. As an
 * extension a handler declared without the callback answers with its return value, and an async handler
 * (or one returning a promise) with what it resolves to (a rejection is an error).
 * - event: the payload parsed as JSON when it parses, else the raw bytes as a Buffer; `{}` for an empty one.
 * - context: messageQOS, messageTopic, messageTimestamp, functionName, functionInvokeID and invokeid.
 * - result: null, undefined or '' give an empty payload (nothing is published); a Buffer (or any Uint8Array)
 *   is sent as it is; anything else as its JSON text (a string too, quoted, as v1 sent it).
 * - errors: `callback(err)`, a throw or a rejection answer the call with gRPC status UNKNOWN, the message
 *   `Type: message` and the error's type in `baetyl-error-type` metadata, as the Python runtime does; the
 *   function manager publishes v1's error payload from them and keeps the instance.
 *
 * Callers: started by the function manager with a per-instance secret in FUNCTION_INSTANCE_SECRET, the runtime
 * serves only calls carrying it as `baetyl-instance-secret` metadata (compared in constant time) and removes it
 * from the environment before user code is loaded. A call carrying `baetyl-instance-challenge` runs nothing: it
 * is answered with `baetyl-instance-proof` (HMAC-SHA256 of the challenge keyed with the secret), by which the
 * manager knows it reached the instance it started and not a process that bound the port first. Both checks
 * run on the call's metadata, before its message is read.
 */
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const util = require('util');

const ERROR_TYPE_KEY = 'baetyl-error-type';
const INSTANCE_SECRET_ENV = 'FUNCTION_INSTANCE_SECRET';
const INSTANCE_SECRET_KEY = 'baetyl-instance-secret';
const INSTANCE_CHALLENGE_KEY = 'baetyl-instance-challenge';
const INSTANCE_PROOF_KEY = 'baetyl-instance-proof';
const MESSAGE_TOO_LARGE = 'MessageTooLarge';
const DEFAULT_MESSAGE_LENGTH = 4 * 1024 * 1024;
const DEFAULT_GRACE_SECONDS = 2;
// After the last call in flight has answered at a stop: time for the answer to leave before the process exits.
const FLUSH_MILLISECONDS = 200;

// ---------------------------------------------------------------- logging, as baetyl_sdk::logging writes it

const LEVELS = { trace: 0, debug: 1, info: 2, warn: 3, warning: 3, error: 4, off: 5 };

function levelOf(spec) {
    // A tracing filter such as `info` or `debug,baetyl_hub=trace`: its bare level applies here.
    for (let directive of String(spec || 'info').split(',')) {
        directive = directive.trim().toLowerCase();
        if (directive && !directive.includes('=')) {
            return directive in LEVELS ? LEVELS[directive] : LEVELS.info;
        }
    }
    return LEVELS.info;
}

function makeLogger(logger) {
    const service = process.env.BAETYL_SERVICE_NAME || 'runtime-node';
    const instance = process.env.BAETYL_SERVICE_INSTANCE_NAME || service;
    const min = levelOf(logger.level);
    const asJson = logger.format === 'json';
    let fd = 2;
    if (logger.path) {
        fs.mkdirSync(path.dirname(logger.path), { recursive: true });
        fd = fs.openSync(logger.path, 'a');
    }
    const write = (level, name, args) => {
        if (LEVELS[level] < min) {
            return;
        }
        const msg = util.format(...args);
        const stamp = new Date().toISOString();
        const line = asJson
            ? JSON.stringify({ time: stamp, level, service, instance, target: 'baetyl_runtime_node', msg })
            : `${stamp} ${name.padStart(5)} ${service}[${instance}] ${msg}`;
        try {
            fs.writeSync(fd, line + '\n');
        } catch (_) {
            // A full disk or a closed stderr must not stop the runtime serving.
        }
    };
    return {
        debug: (...a) => write('debug', 'DEBUG', a),
        info: (...a) => write('info', 'INFO', a),
        warn: (...a) => write('warn', 'WARN', a),
        error: (...a) => write('error', 'ERROR', a),
    };
}

let log = makeLogger({});

function fail(message) {
    log.error('%s', message);
    process.exit(1);
}

// ---------------------------------------------------------------- arguments and config

function parseArgs(argv) {
    const args = {};
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i];
        if (!['--listen', '--config-json', '--proto'].includes(key) || i + 1 >= argv.length) {
            throw new Error(`usage: --listen ADDRESS --config-json JSON --proto TEXT (got \`${key}\`)`);
        }
        args[key.slice(2)] = argv[i + 1];
    }
    for (const key of ['listen', 'config-json', 'proto']) {
        if (args[key] === undefined) {
            throw new Error(`--${key} is missing`);
        }
    }
    return args;
}

// The `server` section as `baetyl runtime-node` resolves it: numbers, and the keys ignored here.
function serverSettings(server) {
    const s = server || {};
    const length = Number(s.max_message_length) || DEFAULT_MESSAGE_LENGTH;
    const grace = s.grace === undefined || s.grace === null ? DEFAULT_GRACE_SECONDS : Number(s.grace);
    const ignored = [];
    if (Array.isArray(s.ignored) && s.ignored.length > 0) {
        ignored.push(`${s.ignored.join(', ')}: ${s.ignored_reason || 'not used by this runtime'}`);
    }
    if (Number(s.workers)) {
        ignored.push('server.workers.max: it sizes the Python runtime\'s thread pool; Node.js runs handlers on '
            + 'one thread, concurrently (server.concurrent.max bounds the calls at once)');
    }
    return { length, concurrent: Number(s.concurrent) || 0, grace, ignored };
}

// ---------------------------------------------------------------- handlers

function loadFunctions(functions) {
    const loaded = new Map();
    for (const f of functions) {
        const codedir = path.resolve(f.codedir || '.');
        const dot = f.handler.lastIndexOf('.');
        const moduleName = f.handler.slice(0, dot);
        const exported = f.handler.slice(dot + 1);
        let mod;
        try {
            // Resolved as v1 did: `<codedir>/<module>` (index.js, index.json, index/ with its package.json);
            // the function's own node_modules/ next to its code is found by Node's usual lookup.
            mod = require(path.join(codedir, moduleName));
        } catch (e) {
            fail(`function ${f.name}: cannot load handler ${f.handler} from ${codedir}: ${describe(e).details}`);
        }
        const fn = mod && mod[exported];
        if (typeof fn !== 'function') {
            fail(`function ${f.name}: module ${moduleName} in ${codedir} exports no function \`${exported}\``);
        }
        loaded.set(f.name, fn);
    }
    return loaded;
}

// The type and message of whatever a handler threw or passed to its callback.
function describe(e) {
    let type = 'Error';
    let message;
    if (e instanceof Error) {
        // A class `MyError extends Error` keeps the name `Error` unless it sets one: its class name says more.
        type = e.name && e.name !== 'Error' ? e.name : (e.constructor && e.constructor.name) || 'Error';
        message = e.message;
    } else if (typeof e === 'string') {
        message = e;
    } else {
        message = util.inspect(e);
    }
    // gRPC metadata values are visible ASCII.
    type = String(type).replace(/[^A-Za-z0-9_.$-]/g, '') || 'Error';
    return { type, details: `${type}: ${message}` };
}

// An error's stack down to the user's frames (the runtime's own, `[eval]`, and gRPC's are left out).
function userStack(e) {
    if (!(e instanceof Error) || typeof e.stack !== 'string') {
        return null;
    }
    const lines = e.stack.split('\n');
    const end = lines.findIndex((line, i) => i > 0 && line.includes('[eval]'));
    return (end > 0 ? lines.slice(0, end) : lines).join('\n');
}

// Runs a handler; resolves with its result or rejects with its error (v1's callback, a promise, a value).
function invoke(fn, event, context) {
    return new Promise((resolve, reject) => {
        let settled = false;
        const settle = (err, value) => {
            if (settled) {
                log.warn('function %s answered more than once; the later answer is ignored', context.functionName);
                return;
            }
            settled = true;
            if (err !== null && err !== undefined) {
                reject(err);
            } else {
                resolve(value);
            }
        };
        const usesCallback = fn.length >= 3;
        let returned;
        try {
            returned = fn(event, context, settle);
        } catch (e) {
            settle(e === undefined || e === null ? new Error('the function threw nothing') : e);
            return;
        }
        if (returned && typeof returned.then === 'function') {
            returned.then(
                (value) => {
                    // A callback-style async handler resolves before it calls back: wait for the callback.
                    if (!usesCallback || value !== undefined) {
                        settle(null, value);
                    }
                },
                (e) => settle(e === undefined || e === null ? new Error('the function rejected with nothing') : e),
            );
        } else if (!usesCallback) {
            settle(null, returned);
        }
    });
}

function resultBytes(value) {
    if (value === undefined || value === null || value === '') {
        return Buffer.alloc(0);
    }
    if (Buffer.isBuffer(value)) {
        return value;
    }
    if (value instanceof Uint8Array) {
        return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    }
    const text = JSON.stringify(value); // throws TypeError for a BigInt or a cycle
    if (text === undefined) {
        throw new TypeError(`the function returned a ${typeof value}, which has no JSON form`);
    }
    return Buffer.from(text, 'utf8');
}

function eventOf(payload) {
    if (!payload || payload.length === 0) {
        return {};
    }
    try {
        return JSON.parse(payload.toString('utf8'));
    } catch (_) {
        return Buffer.from(payload);
    }
}

function status(grpc, code, type, details) {
    const metadata = new grpc.Metadata();
    if (type) {
        metadata.set(ERROR_TYPE_KEY, type);
    }
    return { code, details, metadata };
}

function callHandler(grpc, functions, serialize, limit, calls) {
    return (call, answer) => {
        calls.started();
        const callback = (...a) => {
            answer(...a);
            calls.finished();
        };
        const req = call.request;
        const fn = functions.get(req.FunctionName);
        if (fn === undefined) {
            callback(status(grpc, grpc.status.NOT_FOUND, 'UnknownFunction',
                `function \`${req.FunctionName}\` is not served by this runtime`));
            return;
        }
        const context = {
            messageQOS: req.QOS,
            messageTopic: req.Topic,
            messageTimestamp: Number(req.Timestamp),
            functionName: req.FunctionName,
            functionInvokeID: req.FunctionInvokeID,
            invokeid: req.FunctionInvokeID,
        };
        invoke(fn, eventOf(req.Payload), context)
            .then((value) => {
                const out = serialize({ ...req, Payload: resultBytes(value) });
                if (out.length > limit) {
                    callback(status(grpc, grpc.status.RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE,
                        `the function's result of ${out.length} bytes is larger than the runtime's message limit of ${limit} bytes (server.message.length.max)`));
                    return;
                }
                callback(null, out);
            })
            .catch((e) => {
                const { type, details } = describe(e);
                log.warn('function %s failed: %s', req.FunctionName, userStack(e) || details);
                callback(status(grpc, grpc.status.UNKNOWN, type, details));
            });
    };
}

// ---------------------------------------------------------------- the manager's secret and challenge

function instanceProof(secret, challenge) {
    return crypto.createHmac('sha256', Buffer.from(secret, 'utf8'))
        .update('baetyl-instance-proof:')
        .update(Buffer.from(challenge))
        .digest('hex');
}

function sameSecret(got, want) {
    if (got === undefined) {
        return false;
    }
    const digest = (v) => crypto.createHash('sha256').update(Buffer.from(v)).digest();
    return crypto.timingSafeEqual(digest(got), digest(want));
}

// A server interceptor that answers challenges and refuses calls without the instance secret, both before
// the call's message is read.
function requireSecret(grpc, secret) {
    return (methodDescriptor, call) => {
        const listener = new grpc.ServerListenerBuilder()
            .withOnReceiveMetadata((metadata, next) => {
                const challenge = metadata.get(INSTANCE_CHALLENGE_KEY)[0];
                if (challenge !== undefined) {
                    const answer = new grpc.Metadata();
                    answer.set(INSTANCE_PROOF_KEY, instanceProof(secret, challenge));
                    call.sendStatus({
                        code: grpc.status.FAILED_PRECONDITION,
                        details: 'instance proof: no function runs on a challenge',
                        metadata: answer,
                    });
                    return;
                }
                if (!sameSecret(metadata.get(INSTANCE_SECRET_KEY)[0], secret)) {
                    call.sendStatus({
                        code: grpc.status.UNAUTHENTICATED,
                        details: 'this function instance serves only the function manager that started it: '
                            + `\`${INSTANCE_SECRET_KEY}\` is missing or wrong`,
                    });
                    return;
                }
                next(metadata);
            })
            .build();
        const responder = new grpc.ResponderBuilder().withStart((next) => next(listener)).build();
        return new grpc.ServerInterceptingCall(call, responder);
    };
}

// ---------------------------------------------------------------- main

function main() {
    let args;
    let config;
    try {
        args = parseArgs(process.argv.slice(1));
        config = JSON.parse(args['config-json']);
    } catch (e) {
        fail(`baetyl runtime-node: ${e.message}`);
    }
    log = makeLogger(config.logger || {});
    // Read, then hidden from user code (and from the processes it may start).
    const secret = process.env[INSTANCE_SECRET_ENV] || '';
    delete process.env[INSTANCE_SECRET_ENV];

    let grpc;
    let protobuf;
    let protoLoader;
    try {
        grpc = require('@grpc/grpc-js');
        protoLoader = require('@grpc/proto-loader');
        protobuf = require('protobufjs');
    } catch (e) {
        fail(`the Node.js runtime's modules are missing (${e.message}); install them with scripts/setup.sh `
            + 'and point BAETYL_NODE_MODULES at their node_modules directory');
    }
    const settings = serverSettings(config.server);
    for (const why of settings.ignored) {
        log.warn('ignored %s', why);
    }
    // The project's Function proto (the one the function manager is built from), with v1's field names.
    const root = protobuf.parse(args.proto, { keepCase: true }).root;
    const definition = protoLoader.fromJSON(root.toJSON(), {
        keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
    });
    const method = definition['baetyl.Function'].Call;
    const serialize = method.responseSerialize;
    // Answers are serialized by the handler, which checks their size first.
    const service = { Call: { ...method, responseSerialize: (bytes) => bytes } };

    const functions = loadFunctions(config.functions || []);
    const options = {
        'grpc.max_receive_message_length': settings.length,
        'grpc.max_send_message_length': settings.length,
    };
    if (settings.concurrent > 0) {
        options['grpc.max_concurrent_streams'] = settings.concurrent;
    }
    if (secret) {
        options.interceptors = [requireSecret(grpc, secret)];
    } else {
        log.warn('no %s: any caller is served', INSTANCE_SECRET_ENV);
    }
    const server = new grpc.Server(options);
    // Calls in flight, so that a stop waits for them only (not for the manager's idle connection).
    let inflight = 0;
    let idle = () => {};
    const calls = {
        started: () => { inflight += 1; },
        finished: () => {
            inflight -= 1;
            if (inflight === 0) {
                idle();
            }
        },
    };
    server.addService(service, { Call: callHandler(grpc, functions, serialize, settings.length, calls) });
    server.bindAsync(args.listen, grpc.ServerCredentials.createInsecure(), (err) => {
        if (err) {
            fail(`cannot listen on ${args.listen}: ${err.message}`);
        }
        log.info('serving %s on %s', [...functions.keys()].join(', '), args.listen);
    });

    let stopping = false;
    const stop = (signal) => {
        if (stopping) {
            return;
        }
        stopping = true;
        log.info('%s: stopping; %d call(s) in flight get %ss', signal, inflight, settings.grace);
        const done = (how) => {
            server.forceShutdown();
            log.info('stopped%s', how);
            process.exit(0);
        };
        // No new calls from here on; the ones in flight finish, or are cut off after the grace. The server
        // is done when every connection has closed; a caller that keeps an idle connection open (the function
        // manager does) would hold that up to the grace, so once the last call has answered the runtime exits
        // after a short flush delay: exiting in the answer's own tick cut it off on the wire.
        const force = setTimeout(() => done(` (${inflight} call(s) cut off)`), settings.grace * 1000);
        server.tryShutdown(() => {
            clearTimeout(force);
            done('');
        });
        idle = () => {
            clearTimeout(force);
            setTimeout(() => done(''), FLUSH_MILLISECONDS);
        };
        if (inflight === 0) {
            idle();
        }
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('uncaughtException', (e) => {
        // An error thrown outside any call (a timer of user code): the instance's state is unknown; the
        // function manager replaces an instance that died.
        fail(`uncaught error: ${e && e.stack ? e.stack : util.inspect(e)}`);
    });
}

main();
