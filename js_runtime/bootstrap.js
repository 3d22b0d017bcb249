// webtask's guest-facing runtime, evaluated once into the startup snapshot.
//
// It owns the programming model (how a webtask function is called and how
// its result reaches the host) and the globals guest code sees (console,
// timers). It is the only code that holds `Deno.core`: `lockdown()` is called
// once per isolate by the host, captures what the runner needs in this
// module's closure and deletes every host object from the global, so guest
// code can reach nothing but its own global.
//
// Everything here is strict mode (an ES module), so V8 hides these functions
// and their receivers from guest `Error.prepareStackTrace` call sites.

const core = globalThis.Deno.core;
const ops = core.ops;
const {
  op_wt_complete,
  op_wt_fail,
  op_wt_head,
  op_wt_write,
  op_wt_end,
  op_wt_console,
} = ops;
const { getAsyncContext, setAsyncContext, createTimer, cancelTimer } = core;

const ObjectFreeze = Object.freeze;
const ObjectAssign = Object.assign;
const JSONStringify = JSON.stringify;
const StringCtor = String;
const ArrayIsArray = Array.isArray;
const FunctionPrototypeCall = Function.prototype.call;
const ReflectApply = Reflect.apply;
const PromiseResolve = Promise.resolve.bind(Promise);
const PromisePrototypeThen = Promise.prototype.then;
const ErrorCtor = Error;
const AsyncFunctionProto = Object.getPrototypeOf(async function () {});
const ObjectGetPrototypeOf = Object.getPrototypeOf;

// ---------------------------------------------------------------------------
// Errors crossing to the host: name, message, details and stack. The host's
// prepare-stack-trace hook already keeps only the webtask's own frames.
// ---------------------------------------------------------------------------

function safeString(value) {
  try {
    return StringCtor(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}

// [name, message, stack, details] of any thrown value.
function describe(err) {
  if (err instanceof ErrorCtor || (err !== null && typeof err === "object" &&
      typeof err.message === "string")) {
    const name = safeString(err.name ?? "Error");
    const message = safeString(err.message);
    let stack = "";
    try {
      stack = typeof err.stack === "string" ? err.stack : "";
    } catch {
      // a throwing `stack` getter leaves the stack out
    }
    return [name, message, stack, name + ": " + message];
  }
  const message = safeString(err);
  return ["", message, "", message];
}

function fail(id, err) {
  const [name, message, stack, details] = describe(err);
  op_wt_fail(id, name, message, stack, details);
}

function succeed(id, value) {
  let json;
  try {
    json = JSONStringify(value);
  } catch (e) {
    fail(id, e);
    return;
  }
  op_wt_complete(id, json ?? "null");
}

// ---------------------------------------------------------------------------
// Request context: every callback a request schedules runs with the request
// id as V8's continuation-preserved data, so console lines, timer errors and
// unhandled rejections are attributed to the request that caused them.
// ---------------------------------------------------------------------------

function currentRequest() {
  const id = getAsyncContext();
  return typeof id === "number" ? id : 0;
}

function inContext(id, fn, args) {
  const prev = getAsyncContext();
  setAsyncContext(id);
  try {
    return ReflectApply(fn, undefined, args);
  } catch (e) {
    if (id) fail(id, e);
  } finally {
    setAsyncContext(prev);
  }
}

core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
  const id = currentRequest();
  if (id) fail(id, reason);
  return true;
});
core.setReportExceptionCallback((err) => {
  const id = currentRequest();
  if (id) fail(id, err);
});

// ---------------------------------------------------------------------------
// Guest globals.
// ---------------------------------------------------------------------------

const LEVELS = { debug: 20, trace: 10, log: 30, info: 30, warn: 40, error: 50 };

function formatArg(arg) {
  if (typeof arg === "string") return arg;
  if (arg instanceof ErrorCtor) return arg.stack ?? safeString(arg);
  if (typeof arg === "object" && arg !== null) {
    try {
      return JSONStringify(arg) ?? safeString(arg);
    } catch {
      return safeString(arg);
    }
  }
  return safeString(arg);
}

function format(args) {
  let out = "";
  for (let i = 0; i < args.length; i++) {
    if (i) out += " ";
    out += formatArg(args[i]);
  }
  return out;
}

const guestConsole = {};
for (const name of Object.keys(LEVELS)) {
  const level = LEVELS[name];
  guestConsole[name] = function (...args) {
    op_wt_console(currentRequest(), level, format(args));
  };
}

const timers = new Map();

// The core timer API works on timer objects; keep a table so guests get the
// numeric ids the web platform promises.
function createGuestTimer(callback, delay, args, repeat) {
  if (typeof callback !== "function") {
    throw new TypeError("The \"callback\" argument must be of type function");
  }
  const ctx = currentRequest();
  let timerId = 0;
  const timer = createTimer(
    () => {
      if (!repeat) timers.delete(timerId);
      inContext(ctx, callback, args);
    },
    delay,
    undefined,
    repeat,
    true,
  );
  timerId = timer._timerId;
  timers.set(timerId, timer);
  return timerId;
}
function clearGuestTimer(id) {
  const timer = timers.get(id);
  if (timer !== undefined) {
    timers.delete(id);
    cancelTimer(timer);
  }
}

// ---------------------------------------------------------------------------
// Programming models.
// ---------------------------------------------------------------------------

function isAsyncFunction(fn) {
  return ObjectGetPrototypeOf(fn) === AsyncFunctionProto;
}

function isThenable(v) {
  return v !== null && (typeof v === "object" || typeof v === "function") &&
    typeof v.then === "function";
}

// `function (context, req, res)`: a minimal Node-style response writer that
// streams to the host. Headers go out with the first write or with end().
class ServerResponse {
  #id;
  #headers = { __proto__: null };
  #sent = false;
  #ended = false;
  statusCode = 200;
  constructor(id) {
    this.#id = id;
  }
  get headersSent() {
    return this.#sent;
  }
  get writableEnded() {
    return this.#ended;
  }
  setHeader(name, value) {
    if (this.#sent) throw new ErrorCtor("Cannot set headers after they are sent");
    this.#headers[StringCtor(name).toLowerCase()] = ArrayIsArray(value)
      ? value.map(StringCtor)
      : StringCtor(value);
    return this;
  }
  getHeader(name) {
    return this.#headers[StringCtor(name).toLowerCase()];
  }
  removeHeader(name) {
    delete this.#headers[StringCtor(name).toLowerCase()];
  }
  writeHead(status, reason, headers) {
    if (typeof reason === "object" && reason !== null) headers = reason;
    this.statusCode = status;
    if (headers) {
      for (const k of Object.keys(headers)) this.setHeader(k, headers[k]);
    }
    this.#flushHead();
    return this;
  }
  #flushHead() {
    if (this.#sent) return;
    this.#sent = true;
    const flat = [];
    for (const k of Object.keys(this.#headers)) {
      const v = this.#headers[k];
      if (ArrayIsArray(v)) for (const one of v) flat.push(k, one);
      else flat.push(k, v);
    }
    op_wt_head(this.#id, this.statusCode | 0, flat);
  }
  write(chunk, encoding, callback) {
    if (this.#ended) throw new ErrorCtor("write after end");
    this.#flushHead();
    if (typeof encoding === "function") callback = encoding;
    let ok = true;
    if (chunk !== undefined && chunk !== null) {
      ok = op_wt_write(this.#id, toChunk(chunk));
    }
    if (typeof callback === "function") callback();
    return ok;
  }
  end(chunk, encoding, callback) {
    if (this.#ended) return this;
    if (typeof chunk === "function") {
      callback = chunk;
      chunk = undefined;
    }
    if (chunk !== undefined && chunk !== null) this.write(chunk, encoding);
    this.#flushHead();
    this.#ended = true;
    op_wt_end(this.#id);
    if (typeof callback === "function") callback();
    return this;
  }
}

function toChunk(chunk) {
  if (typeof chunk === "string") return chunk;
  if (ArrayBuffer.isView(chunk)) return chunk;
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  return StringCtor(chunk);
}

// A small IncomingMessage: method, url, headers and the raw body as one
// 'data' event followed by 'end' (the Node shim replaces this later).
function makeIncoming(method, url, headers, rawBody) {
  const listeners = { __proto__: null };
  const req = {
    method,
    url,
    headers,
    on(event, fn) {
      (listeners[event] ??= []).push(fn);
      if (event === "data" || event === "end") scheduleBody();
      return req;
    },
  };
  req.addListener = req.on;
  req.once = req.on;
  let scheduled = false;
  function scheduleBody() {
    if (scheduled) return;
    scheduled = true;
    queueMicrotask(() => {
      if (rawBody !== undefined && rawBody !== "") {
        for (const fn of listeners.data ?? []) fn(rawBody);
      }
      for (const fn of listeners.end ?? []) fn();
    });
  }
  return req;
}

function isPlainObject(v) {
  return v !== null && typeof v === "object" && !ArrayIsArray(v);
}

// Calls `fn` for request `id`. Completion always goes through the ops
// (op_wt_complete / op_wt_fail / op_wt_end); the first outcome wins.
function run(fn, id, method, url, headers, query, body, rawBody, data, secrets, meta) {
  const context = {
    data: ObjectAssign({}, query, isPlainObject(body) ? body : undefined, data),
    query,
    body,
    headers,
    secrets,
    meta,
  };
  setAsyncContext(id);
  try {
    if (fn.length >= 3) {
      const req = makeIncoming(method, url, headers, rawBody);
      const r = fn(context, req, new ServerResponse(id));
      if (isThenable(r)) {
        FunctionPrototypeCall.call(PromisePrototypeThen, r, undefined, (e) => fail(id, e));
      }
      return;
    }
    let done = false;
    const cb = (err, value) => {
      if (done) return;
      done = true;
      if (err !== null && err !== undefined) fail(id, err);
      else succeed(id, value);
    };
    const isAsync = isAsyncFunction(fn);
    // `function (cb)` is the one-argument Webtask model; async functions
    // and two-argument functions get the context first.
    const usesCb = isAsync ? fn.length >= 2 : fn.length !== 0;
    const r = (!isAsync && fn.length === 1) ? fn(cb) : fn(context, cb);
    if (isThenable(r)) {
      FunctionPrototypeCall.call(
        PromisePrototypeThen,
        PromiseResolve(r),
        (value) => {
          if (!usesCb || value !== undefined) cb(null, value);
        },
        (e) => cb(e ?? new ErrorCtor("Promise rejected with " + safeString(e))),
      );
    } else if (!usesCb) {
      cb(null, r);
    }
  } catch (e) {
    fail(id, e);
  } finally {
    setAsyncContext(undefined);
  }
}

function requireUnavailable(name) {
  throw new ErrorCtor(`Cannot find module '${safeString(name)}'`);
}

// Turns the compiled webtask body into the webtask function: either what the
// body returns (`return function (...) {}`) or what it puts in module.exports.
// A failure is returned as describe()'s array, for the host to report.
function instantiate(factory) {
  try {
    const module = { exports: {} };
    const returned = FunctionPrototypeCall.call(
      factory,
      globalThis,
      module,
      module.exports,
      requireUnavailable,
    );
    const fn = typeof returned === "function" ? returned : module.exports;
    if (typeof fn !== "function") {
      throw new TypeError(
        "The code must return a function or assign one to module.exports",
      );
    }
    return fn;
  } catch (e) {
    return describe(e);
  }
}

// Called once per isolate by the host; returns the runner's entry points and
// leaves the guest with its own global only.
globalThis.__webtask_lockdown = function lockdown() {
  const g = globalThis;
  delete g.__webtask_lockdown;
  delete g.Deno;
  delete g.__bootstrap;
  delete g.__infra;
  g.console = ObjectFreeze(guestConsole);
  g.setTimeout = (cb, delay, ...args) => createGuestTimer(cb, delay, args, false);
  g.setInterval = (cb, delay, ...args) => createGuestTimer(cb, delay, args, true);
  g.clearTimeout = clearGuestTimer;
  g.clearInterval = clearGuestTimer;
  g.global = g;
  return { run, instantiate };
};
