// What Node 20's `util` has beyond the polyfill (util@0.12):
//
// - inspect, format and formatWithOptions are Node's own code
//   (node-inspect-extracted: lib/internal/util/inspect.js with its
//   requires replaced), so options (depth, compact, breakLength, colors,
//   showHidden, sorted, getters ...), `[util.inspect.custom]`, line
//   breaking and every type's rendering are Node's. What Node reads from
//   V8 internals comes from `host`: a promise's state and result, the
//   entries of a collection or iterator (without iterating it). A
//   proxy's target and handler stay hidden (inspect formats the proxy as
//   the object it seems to be): the runtime's own proxies guard host
//   objects, and Node hands the target it finds to the guest's
//   `[util.inspect.custom]` hooks.
// - util.types from V8's own type checks (`host.types`, deno_core's
//   ops), not the polyfill's duck typing: `isPromise({then, catch})` is
//   false, as in Node.
// - isDeepStrictEqual, stripVTControlCharacters, toUSVString,
//   getSystemErrorName and getSystemErrorMap, aborted, parseArgs
//   (@pkgjs/parseargs, Node's implementation), styleText, debug, and the
//   web classes as the globals.
"use strict";

const { argType, coded } = require("./node-errors.js");
const inspectHost = require("./inspect-host.js");
const { parseArgs } = require("@pkgjs/parseargs");
// [errno, [name, message]] of Node's util.getSystemErrorMap() on Linux,
// taken from the Node that builds the bundle (see build.mjs).
const { errnos: errnoEntries } = require("webtask:node-facts");
// Loaded once inspectHost is filled in: it reads the types as it loads.
let nodeInspect;

module.exports = function withNode20Util(util, host) {
  if (util.formatWithOptions) return util;
  inspectHost.promiseDetails = host.promiseDetails;
  inspectHost.previewEntries = host.previewEntries;
  util.types = Object.assign({}, util.types, host.types);
  inspectHost.types = util.types;
  util.inspect = inspect;
  util.format = function format() {
    return loadInspect().format.apply(this, arguments);
  };
  util.formatWithOptions = function formatWithOptions() {
    return loadInspect().formatWithOptions.apply(this, arguments);
  };
  util.stripVTControlCharacters = function stripVTControlCharacters(str) {
    return loadInspect().stripVTControlCharacters(str);
  };
  util.isDeepStrictEqual = isDeepStrictEqual;
  util.toUSVString = (input) => `${input}`.toWellFormed();
  util.getSystemErrorName = (err) => {
    checkErrno(err);
    return errnoMap().get(err)?.[0] ?? `Unknown system error ${err}`;
  };
  util.getSystemErrorMap = () => new Map(errnoMap());
  util.aborted = aborted;
  util.parseArgs = parseArgs;
  util.styleText = styleText;
  util.debug = util.debuglog;
  util.TextEncoder = globalThis.TextEncoder;
  util.TextDecoder = globalThis.TextDecoder;
  return util;
};

// Node's inspect costs an isolate 5-10 ms to load, its functions from the
// code cache (its primordials are most of it), and most code that
// requires util never calls it: it loads on first use. What modules read from util.inspect as they load
// (`util.inspect.custom`) is there before.
function loadInspect() {
  nodeInspect ??= require("node-inspect-extracted");
  return nodeInspect;
}

// The parameters only make `inspect.length` 2, as Node's.
function inspect(value, options) {
  return loadInspect().inspect.apply(this, arguments);
}
inspect.custom = Symbol.for("nodejs.util.inspect.custom");
for (const key of ["defaultOptions", "colors", "styles"]) {
  Object.defineProperty(inspect, key, {
    get: () => loadInspect().inspect[key],
    set: (value) => {
      loadInspect().inspect[key] = value;
    },
    enumerable: key !== "defaultOptions",
    configurable: true,
  });
}

function isDeepStrictEqual(a, b) {
  try {
    require("assert/").deepStrictEqual(a, b);
    return true;
  } catch {
    return false;
  }
}

let errnos;
function errnoMap() {
  errnos ??= new Map(errnoEntries);
  return errnos;
}

function checkErrno(err) {
  if (typeof err !== "number") throw argType("err", "of type number", err);
  if (!(err < 0) || !Number.isSafeInteger(err)) {
    throw coded(RangeError, "ERR_OUT_OF_RANGE", `The value of "err" is out of range. It must be a negative integer. Received ${err}`);
  }
}

// Resolves once `signal` aborts (async, as Node's: bad arguments reject).
// Node also lets go of the wait when `resource` is collected; here it
// lives as long as the signal's listener.
async function aborted(signal, resource) {
  if (!(signal instanceof AbortSignal)) throw argType("signal", "an instance of AbortSignal", signal);
  if (resource === null || (typeof resource !== "object" && typeof resource !== "function")) {
    throw argType("resource", "of type object", resource);
  }
  if (signal.aborted) return;
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}

// A webtask's output is never a terminal, so, as Node does for a stream
// that is not a TTY, the text comes back without escape codes; the
// format is checked all the same.
function styleText(format, text) {
  if (typeof text !== "string") throw argType("text", "of type string", text);
  const colors = loadInspect().inspect.colors;
  for (const key of Array.isArray(format) ? format : [format]) {
    if (colors[key] == null) {
      const allowed = Object.keys(colors).map((k) => `'${k}'`).join(", ");
      const shown = typeof key === "string" ? `'${key}'` : loadInspect().inspect(key);
      throw coded(TypeError, "ERR_INVALID_ARG_VALUE", `The argument 'format' must be one of: ${allowed}. Received ${shown}`);
    }
  }
  return text;
}
