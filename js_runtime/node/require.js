// CommonJS `require` for guest code: Node's built-ins and the fixed module
// set, resolved as Node resolves (relative paths, node_modules lookup,
// package.json `main` and `exports`, `node:` prefix) over the in-memory file
// table of src/engine/node/modules.rs (which resolves and compiles; the
// index stays out of the snapshot), and `require('name@range')` checked
// against the installed version.
//
// The module cache lives in this module's scope, which is part of the
// startup snapshot: every isolate starts with an empty cache, and an isolate
// serves one container, so module instances are shared by the requests of
// one container and never across containers.
//
// What every webtask's first run calls is compiled into the snapshot (the
// `const f = (function f() {...})` form; see bootstrap.js).
//
// Guest code can reach every function here (through `require`), and module
// code runs with guest privilege only; what it must not reach are the ops,
// which stay in this strict-mode module's closure.

const core = globalThis.Deno.core;
const { op_wt_module_resolve, op_wt_module_version, op_wt_module_compile, op_wt_module_text, op_wt_load_builtins } =
  core.ops;
const { op_get_promise_details, op_wt_preview_entries } = core.ops;
// The polyfill bundle: compiled and evaluated on an isolate's first require
// of a built-in backed by it (see op_wt_load_builtins).
let polyfills;

/// The exports of polyfill `name` of the bundle (src/builtins-entry.js);
/// `host` is what it needs from the host, if anything.
export function polyfill(name, host) {
  if (!polyfills) {
    polyfills = op_wt_load_builtins();
  }
  return polyfills[name](host);
}
const {
  ArrayIsArray,
  SafeMapIterator,
  ArrayPrototypeJoin,
  ArrayPrototypePop,
  ArrayPrototypePush,
  Error: ErrorCtor,
  JSONParse,
  NumberParseInt,
  ObjectCreate,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectKeys,
  ObjectPrototypeHasOwnProperty,
  Proxy: ProxyCtor,
  ReflectApply,
  SafeMap,
  String: StringCtor,
  StringPrototypeEndsWith,
  StringPrototypeIndexOf,
  StringPrototypeLastIndexOf,
  StringPrototypeSlice,
  StringPrototypeSplit,
  StringPrototypeStartsWith,
  StringPrototypeTrim,
  TypeError: TypeErrorCtor,
} = globalThis.__bootstrap.primordials;

// ---------------------------------------------------------------------------
// Built-ins.
// ---------------------------------------------------------------------------

const builtinFactories = new SafeMap();
const builtinCache = new SafeMap();

/// Registers built-in `name`; `factory()` runs once per isolate, on first require.
export function registerBuiltin(name, factory) {
  builtinFactories.set(name, factory);
}

for (const name of ["assert", "buffer", "events", "path", "punycode", "querystring", "string_decoder", "url"]) {
  registerBuiltin(name, () => polyfill(name));
}
registerBuiltin("stream", () => polyfill("stream"));
// util with what Node reads from V8 (see src/util-node20.js): a promise's
// state, a collection's or iterator's entries, and util.types from V8's
// own checks.
registerBuiltin("util", () => polyfill("util", { promiseDetails, previewEntries: op_wt_preview_entries, types: utilTypes() }));

// crypto.js's CryptoKey (it imports this module, so it hands the class
// over rather than being imported).
let CryptoKeyClass;
export function provideCryptoKey(Class) {
  CryptoKeyClass = Class;
}

function promiseDetails(promise) {
  try {
    return op_get_promise_details(promise);
  } catch {
    // Not a promise after all (a forged Symbol.toStringTag).
    return [0];
  }
}

function utilTypes() {
  const ops = core.ops;
  const types = {
    isAnyArrayBuffer: ops.op_is_any_array_buffer,
    isArgumentsObject: ops.op_is_arguments_object,
    isArrayBuffer: ops.op_is_array_buffer,
    isArrayBufferView: ops.op_is_array_buffer_view,
    isAsyncFunction: ops.op_is_async_function,
    isBigIntObject: ops.op_is_big_int_object,
    isBooleanObject: ops.op_is_boolean_object,
    isBoxedPrimitive: ops.op_is_boxed_primitive,
    isDataView: ops.op_is_data_view,
    isDate: ops.op_is_date,
    isGeneratorFunction: ops.op_is_generator_function,
    isGeneratorObject: ops.op_is_generator_object,
    isMap: ops.op_is_map,
    isMapIterator: ops.op_is_map_iterator,
    isModuleNamespaceObject: ops.op_is_module_namespace_object,
    isNativeError: ops.op_is_native_error,
    isNumberObject: ops.op_is_number_object,
    isPromise: ops.op_is_promise,
    isProxy: ops.op_is_proxy,
    isRegExp: ops.op_is_reg_exp,
    isSet: ops.op_is_set,
    isSetIterator: ops.op_is_set_iterator,
    isSharedArrayBuffer: ops.op_is_shared_array_buffer,
    isStringObject: ops.op_is_string_object,
    isSymbolObject: ops.op_is_symbol_object,
    isTypedArray: ops.op_is_typed_array,
    isWeakMap: ops.op_is_weak_map,
    isWeakSet: ops.op_is_weak_set,
  };
  // Each a function of its own name and no declared parameters, as
  // Node's (an op's function shows the op's name).
  const out = ObjectCreate(null);
  const names = ObjectKeys(types);
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    const check = types[name];
    out[name] = {
      [name]() {
        return check(arguments[0]);
      },
    }[name];
  }
  // Nothing the guest can reach is a V8 External.
  out.isExternal = function isExternal(_value) {
    return false;
  };
  out.isKeyObject = function isKeyObject(value) {
    return value instanceof builtin("crypto").KeyObject;
  };
  out.isCryptoKey = function isCryptoKey(value) {
    return value instanceof CryptoKeyClass;
  };
  return out;
}
registerBuiltin("assert/strict", () => builtin("assert").strict);
registerBuiltin("path/posix", () => builtin("path"));
registerBuiltin("util/types", () => builtin("util").types);
registerBuiltin("stream/promises", () => builtin("stream").promises);
registerBuiltin("stream/consumers", () => polyfill("stream_consumers"));

// Modules that would reach the host (files, processes, sockets, other
// isolates, code compilation outside the guest's own eval): present, so
// that modules requiring them at load time still load, but every use
// throws. No partial escape hatches.
const UNAVAILABLE = [
  "child_process", "cluster", "dgram", "dns", "dns/promises", "fs", "fs/promises", "http2", "inspector", "module",
  "net", "readline", "repl", "tls", "trace_events", "v8", "vm", "wasi", "worker_threads",
];

/// An error as Node throws it: `Ctor`, Node's `code`, Node's message.
/// Shared by the snapshot's modules (the bundle has src/node-errors.js).
export function codedError(Ctor, code, message) {
  const err = new Ctor(message);
  err.code = code;
  return err;
}

/// How Node's ERR_INVALID_ARG_TYPE describes the value it got.
export function received(value) {
  if (value === null || value === undefined) return `${value}`;
  if (typeof value === "function") return `function ${value.name}`;
  if (typeof value === "object") return `an instance of ${value.constructor?.name || "Object"}`;
  let shown = StringCtor(value);
  if (typeof value === "string") shown = `'${value.length > 25 ? StringPrototypeSlice(value, 0, 25) + "..." : value}'`;
  return `type ${typeof value} (${shown})`;
}

/// What Node throws for `new` of a Web interface that has no constructor.
export function illegalConstructor() {
  return codedError(TypeErrorCtor, "ERR_ILLEGAL_CONSTRUCTOR", "Illegal constructor");
}

export function unavailableError(what, why) {
  const err = new ErrorCtor(`${what} is not available in webtask${why ? ": " + why : ""}`);
  err.code = "ERR_WEBTASK_UNAVAILABLE";
  return err;
}

function unavailableModule(name) {
  const fns = new SafeMap();
  return new ProxyCtor(ObjectCreate(null), {
    __proto__: null,
    get(_target, key) {
      // "constructor" too: util.inspect reads it for the class name.
      if (typeof key !== "string" || key === "then" || key === "__esModule" || key === "constructor") return undefined;
      let fn = fns.get(key);
      if (fn === undefined) {
        const what = `${name}.${key}`;
        // A function (with a prototype: `x instanceof fs.Stats` must not
        // throw), named as Node's (`fs.readFileSync.name`).
        fn = function () {
          throw unavailableError(what);
        };
        ObjectDefineProperty(fn, "name", { __proto__: null, value: key, configurable: true });
        fns.set(key, fn);
      }
      return fn;
    },
    set() {
      return false;
    },
    has() {
      return false;
    },
    ownKeys() {
      return [];
    },
    defineProperty() {
      return false;
    },
  });
}
for (let i = 0; i < UNAVAILABLE.length; i++) {
  const name = UNAVAILABLE[i];
  registerBuiltin(name, () => unavailableModule(name));
}

// `tty`: nothing is a terminal (debug and colour libraries ask at load).
registerBuiltin("tty", () => ({
  isatty: () => false,
  ReadStream: function ReadStream() {
    throw unavailableError("tty.ReadStream");
  },
  WriteStream: function WriteStream() {
    throw unavailableError("tty.WriteStream");
  },
}));

/// The exports of built-in `name` (undefined if there is none).
export function builtin(name) {
  let exports = builtinCache.get(name);
  if (exports !== undefined) return exports;
  const factory = builtinFactories.get(name);
  if (factory === undefined) return undefined;
  exports = factory();
  builtinCache.set(name, exports);
  return exports;
}

export function isBuiltin(name) {
  if (StringPrototypeStartsWith(name, "node:")) name = StringPrototypeSlice(name, 5);
  return builtinFactories.has(name);
}

export function builtinNames() {
  const out = [];
  for (const name of new SafeMapIterator(builtinFactories)) {
    ArrayPrototypePush(out, name[0]);
  }
  return out;
}

const dirname = (function dirname(path) {
  const at = StringPrototypeLastIndexOf(path, "/");
  return at <= 0 ? "/" : StringPrototypeSlice(path, 0, at);
});

function notFound(id, why) {
  const err = new ErrorCtor(`Cannot find module '${id}'${why ? ": " + why : ""}`);
  err.code = "MODULE_NOT_FOUND";
  return err;
}

// ---------------------------------------------------------------------------
// `name@range`: the set holds one version of each module; asking for a
// range it does not satisfy is an error naming what is installed.
// ---------------------------------------------------------------------------

function parseVersion(text) {
  const t = StringPrototypeTrim(text);
  const v = t[0] === "v" || t[0] === "=" ? StringPrototypeSlice(t, 1) : t;
  const core = StringPrototypeSplit(StringPrototypeSplit(v, "-")[0], "+")[0];
  const parts = StringPrototypeSplit(core, ".");
  if (parts.length > 3) return null;
  const out = [];
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i];
    if (p === "x" || p === "X" || p === "*") break;
    if (p === "" || !isDigits(p)) return null;
    ArrayPrototypePush(out, NumberParseInt(p, 10));
  }
  return out;
}

function isDigits(s) {
  for (let i = 0; i < s.length; i++) if (s[i] < "0" || s[i] > "9") return false;
  return s.length > 0;
}

function cmp(a, b) {
  for (let i = 0; i < 3; i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

// The version after every version matching partial `p` (1.2 -> 1.3.0).
function bumpPartial(p) {
  if (p.length === 0) return null;
  const out = [p[0], p[1] ?? 0, p[2] ?? 0];
  const at = p.length - 1;
  out[at]++;
  for (let i = at + 1; i < 3; i++) out[i] = 0;
  return out;
}

function satisfiesComparator(v, comp) {
  let op = "";
  let i = 0;
  while (i < comp.length && (comp[i] === "<" || comp[i] === ">" || comp[i] === "=" || comp[i] === "^" || comp[i] === "~")) i++;
  op = StringPrototypeSlice(comp, 0, i);
  const p = parseVersion(StringPrototypeSlice(comp, i));
  if (p === null) throw new TypeErrorCtor(`Invalid version range: ${comp}`);
  const full = [p[0] ?? 0, p[1] ?? 0, p[2] ?? 0];
  switch (op) {
    case "":
    case "=": {
      if (p.length === 0) return true;
      const hi = bumpPartial(p);
      return cmp(v, full) >= 0 && cmp(v, hi) < 0;
    }
    case ">=":
      return cmp(v, full) >= 0;
    case ">":
      return p.length === 3 ? cmp(v, full) > 0 : p.length === 0 ? false : cmp(v, bumpPartial(p)) >= 0;
    case "<":
      return cmp(v, full) < 0;
    case "<=":
      return p.length === 3 ? cmp(v, full) <= 0 : p.length === 0 ? true : cmp(v, bumpPartial(p)) < 0;
    case "~":
    case "~>": {
      if (p.length === 0) return true;
      const hi = p.length === 1 ? [p[0] + 1, 0, 0] : [p[0], p[1] + 1, 0];
      return cmp(v, full) >= 0 && cmp(v, hi) < 0;
    }
    case "^": {
      if (p.length === 0) return true;
      let hi;
      if (full[0] > 0 || p.length === 1) hi = [full[0] + 1, 0, 0];
      else if (full[1] > 0 || p.length === 2) hi = [0, full[1] + 1, 0];
      else hi = [0, 0, full[2] + 1];
      return cmp(v, full) >= 0 && cmp(v, hi) < 0;
    }
  }
  throw new TypeErrorCtor(`Invalid version range: ${comp}`);
}

/// Whether version `version` ("4.17.21") is in npm range `range`.
export function satisfies(version, range) {
  const v = parseVersion(version);
  const alternatives = StringPrototypeSplit(range, "||");
  for (let a = 0; a < alternatives.length; a++) {
    const comps = StringPrototypeSplit(StringPrototypeTrim(alternatives[a]), " ");
    let ok = true;
    for (let c = 0; c < comps.length && ok; c++) {
      if (comps[c] === "") continue;
      ok = satisfiesComparator(v, comps[c]);
    }
    if (ok) return true;
  }
  return false;
}

// "lodash@4" -> ["lodash", "4"]; "@scope/pkg@^1" -> ["@scope/pkg", "^1"].
function splitVersion(id) {
  const at = StringPrototypeIndexOf(id, "@", 1);
  if (at === -1 || StringPrototypeIndexOf(id, "/", at) !== -1) return null;
  return [StringPrototypeSlice(id, 0, at), StringPrototypeSlice(id, at + 1)];
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

// Module objects by file name; exposed as `require.cache`, as in Node.
const cache = ObjectCreate(null);

const Module = (function Module(id, parent) {
  this.id = id;
  this.path = dirname(id);
  this.filename = id;
  this.exports = {};
  this.parent = parent;
  this.loaded = false;
  this.children = [];
  this.paths = [];
});

function load(n, filename, parent) {
  const cached = cache[filename];
  if (cached !== undefined) return cached.exports;
  const module = new Module(filename, parent);
  if (parent && parent.children) ArrayPrototypePush(parent.children, module);
  cache[filename] = module;
  let ok = false;
  try {
    if (StringPrototypeEndsWith(filename, ".json")) {
      module.exports = JSONParse(op_wt_module_text(n));
    } else {
      const fn = op_wt_module_compile(n, filename);
      const require = makeRequire(module);
      module.require = require;
      ReflectApply(fn, module.exports, [module.exports, require, module, filename, module.path]);
    }
    module.loaded = true;
    ok = true;
  } finally {
    if (!ok) delete cache[filename];
  }
  return module.exports;
}

function requireFrom(id, parent) {
  if (typeof id !== "string") {
    throw new TypeErrorCtor(`The "id" argument must be of type string. Received ${typeof id}`);
  }
  if (id === "") throw new TypeErrorCtor("The argument 'id' must be a non-empty string. Received ''");
  if (StringPrototypeStartsWith(id, "node:")) {
    const exports = builtin(StringPrototypeSlice(id, 5));
    if (exports === undefined) {
      const err = new ErrorCtor(`No such built-in module: ${id}`);
      err.code = "ERR_UNKNOWN_BUILTIN_MODULE";
      throw err;
    }
    return exports;
  }
  const b = builtin(id);
  if (b !== undefined) return b;
  const versioned = splitVersion(id);
  if (versioned !== null) {
    const { 0: name, 1: range } = versioned;
    const installed = op_wt_module_version(name);
    if (installed === null) {
      throw notFound(id, `${name} is not in webtask's module set`);
    }
    let ok;
    try {
      ok = satisfies(installed, range);
    } catch (e) {
      throw notFound(id, e.message);
    }
    if (!ok) {
      throw notFound(id, `webtask's module set has ${name}@${installed}, which does not satisfy '${range}'`);
    }
    id = name;
  }
  const found = op_wt_module_resolve(id, parent ? parent.path : "/");
  if (found === null) throw notFound(id, "");
  return load(found[0], found[1], parent);
}

const makeRequire = (function makeRequire(module) {
  const require = function require(id) {
    return requireFrom(id, module);
  };
  require.resolve = function resolve(id) {
    if (typeof id !== "string") throw new TypeErrorCtor(`The "request" argument must be of type string`);
    if (isBuiltin(id)) return id;
    const versioned = splitVersion(id);
    const found = op_wt_module_resolve(versioned ? versioned[0] : id, module ? module.path : "/");
    if (found === null) throw notFound(id, "");
    return found[1];
  };
  require.cache = cache;
  require.main = undefined;
  return require;
});

/// The `module` and `require` a webtask's own code gets: it is `/webtask.js`,
/// so bare names resolve in `/node_modules`, where the set is.
export const webtaskModule = (function webtaskModule() {
  const module = new Module("/webtask.js", null);
  module.loaded = true;
  const require = makeRequire(module);
  module.require = require;
  return { module, require };
});
