// What Node 20's `events` has beyond the polyfill (events@3): errorMonitor,
// captureRejectionSymbol, on() (an event as an async iterator),
// getEventListeners, getMaxListeners, setMaxListeners and
// addAbortListener. build.mjs runs
// this on the polyfill's own module, so every EventEmitter (the streams'
// too) has them, whoever loads `events` first.
"use strict";

const { argType, coded } = require("./node-errors.js");

module.exports = function addNode20(EventEmitter) {
  const errorMonitor = Symbol("events.errorMonitor");
  const emit = EventEmitter.prototype.emit;
  // errorMonitor's listeners see an 'error' before its handlers do (and
  // whether or not there are any).
  EventEmitter.prototype.emit = function emitWithMonitor(type) {
    if (type === "error" && this._events !== undefined && this._events[errorMonitor] !== undefined) {
      const args = Array.prototype.slice.call(arguments);
      args[0] = errorMonitor;
      emit.apply(this, args);
    }
    return emit.apply(this, arguments);
  };
  EventEmitter.errorMonitor = errorMonitor;
  EventEmitter.captureRejectionSymbol = Symbol.for("nodejs.rejection");
  EventEmitter.on = on;
  EventEmitter.getEventListeners = (emitter, type) => {
    if (typeof emitter?.listeners === "function") return emitter.listeners(type);
    throw eventTargetUnavailable("getEventListeners");
  };
  EventEmitter.getMaxListeners = (emitter) => {
    if (typeof emitter?.getMaxListeners === "function") return emitter.getMaxListeners();
    throw eventTargetUnavailable("getMaxListeners");
  };
  EventEmitter.captureRejections = false;
  EventEmitter.usingDomains = false;
  EventEmitter.addAbortListener = addAbortListener;
  EventEmitter.setMaxListeners = (n = EventEmitter.defaultMaxListeners, ...targets) => {
    if (typeof n !== "number" || n < 0 || Number.isNaN(n)) {
      throw coded(RangeError, "ERR_OUT_OF_RANGE", `The value of "n" is out of range. It must be a non-negative number. Received ${n}`);
    }
    if (targets.length === 0) EventEmitter.defaultMaxListeners = n;
    for (const target of targets) {
      if (typeof target?.setMaxListeners === "function") target.setMaxListeners(n);
      // An EventTarget: Node only warns past the count, which this
      // runtime never does.
      else if (typeof target?.addEventListener !== "function") {
        throw argType("eventTargets", "an instance of EventEmitter or EventTarget", target);
      }
    }
  };
};

// `listener` once `signal` aborts (on a later microtask if it already
// has); disposing of the result (`using`) lets go of it.
function addAbortListener(signal, listener) {
  if (!(signal instanceof AbortSignal)) throw argType("signal", "an instance of AbortSignal", signal);
  if (typeof listener !== "function") throw argType("listener", "of type function", listener);
  let remove;
  if (signal.aborted) {
    queueMicrotask(() => listener());
  } else {
    signal.addEventListener("abort", listener, { once: true });
    remove = () => signal.removeEventListener("abort", listener);
  }
  return {
    __proto__: null,
    [Symbol.dispose]() {
      remove?.();
    },
  };
}

function eventTargetUnavailable(what) {
  return coded(TypeError, "ERR_WEBTASK_UNAVAILABLE", `events.${what} of an EventTarget is not available in webtask`);
}

function abortError(reason) {
  const err = coded(Error, "ABORT_ERR", "The operation was aborted");
  err.name = "AbortError";
  err.cause = reason;
  return err;
}

// `for await (const args of on(emitter, "event"))`: each emission's
// arguments, in order, until an 'error' (thrown from the loop), one of
// `options.close`'s events (the loop ends) or `options.signal` aborting.
function on(emitter, event, options = {}) {
  const { signal, close = [] } = options;
  if (signal?.aborted) throw abortError(signal.reason);
  const events = [];
  const waiting = [];
  let error = null;
  let finished = false;

  const stop = () => {
    emitter.removeListener(event, onEvent);
    emitter.removeListener("error", onError);
    for (const name of close) emitter.removeListener(name, onClose);
    signal?.removeEventListener("abort", onAbort);
    finished = true;
    while (waiting.length > 0) waiting.shift().resolve({ value: undefined, done: true });
  };
  function onEvent(...args) {
    if (waiting.length > 0) waiting.shift().resolve({ value: args, done: false });
    else events.push(args);
  }
  function onError(err) {
    if (waiting.length > 0) waiting.shift().reject(err);
    else error = err;
    stop();
  }
  function onClose() {
    stop();
  }
  function onAbort() {
    onError(abortError(signal.reason));
  }

  emitter.on(event, onEvent);
  if (event !== "error") emitter.on("error", onError);
  for (const name of close) emitter.on(name, onClose);
  signal?.addEventListener("abort", onAbort, { once: true });

  const AsyncIteratorPrototype = Object.getPrototypeOf(Object.getPrototypeOf(async function* () {}).prototype);
  return Object.setPrototypeOf(
    {
      next() {
        if (events.length > 0) return Promise.resolve({ value: events.shift(), done: false });
        if (error !== null) {
          const failed = Promise.reject(error);
          error = null;
          return failed;
        }
        if (finished) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
      },
      return() {
        stop();
        return Promise.resolve({ value: undefined, done: true });
      },
      throw(err) {
        stop();
        return Promise.reject(err);
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    },
    AsyncIteratorPrototype,
  );
}
