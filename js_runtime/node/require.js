// CommonJS `require` for guest code: Node's built-ins and the fixed module
// set, resolved as Node resolves (relative paths, node_modules lookup,
// package.json `main` and `exports`, `node:` prefix) over an in-memory file
// table (src/engine/node/modules.rs), and `require('name@range')` checked
// against the installed version.
//
// The module cache lives in this module's scope, which is part of the
// startup snapshot: every isolate starts with an empty cache, and an isolate
// serves one container, so module instances are shared by the requests of
// one container and never across containers.
//
// Guest code can reach every function here (through `require`), and module
// code runs with guest privilege only; what it must not reach are the ops,
// which stay in this strict-mode module's closure.

import { polyfills } from "ext:webtask_runtime/node/dist/builtins.js";

const core = globalThis.Deno.core;
const { op_wt_module_index, op_wt_module_compile, op_wt_module_text } = core.ops;
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

// Read once, into the snapshot.
const index = JSONParse(op_wt_module_index());
const fileIds = new SafeMap();
for (let i = 0; i < index.files.length; i++) fileIds.set(index.files[i], i);
const packages = index.packages;
const moduleSet = index.set;

/// `[{name, version}]` of the module set, sorted by name.
export function moduleList() {
  const names = ObjectKeys(moduleSet);
  const out = [];
  for (let i = 0; i < names.length; i++) ArrayPrototypePush(out, { name: names[i], version: moduleSet[names[i]] });
  return out;
}

// ---------------------------------------------------------------------------
// Built-ins.
// ---------------------------------------------------------------------------

const builtinFactories = new SafeMap();
const builtinCache = new SafeMap();

/// Registers built-in `name`; `factory()` runs once per isolate, on first require.
export function registerBuiltin(name, factory) {
  builtinFactories.set(name, factory);
}

for (const name of ["assert", "buffer", "events", "path", "punycode", "querystring", "stream", "string_decoder", "url", "util"]) {
  registerBuiltin(name, polyfills[name]);
}
registerBuiltin("assert/strict", () => builtin("assert").strict);
registerBuiltin("path/posix", () => builtin("path"));
registerBuiltin("util/types", () => builtin("util").types);
registerBuiltin("stream/promises", () => {
  const { pipeline, finished } = builtin("stream");
  const promisify = builtin("util").promisify;
  return { pipeline: promisify(pipeline), finished: promisify(finished) };
});

// Modules that would reach the host (files, processes, sockets, other
// isolates, code compilation outside the guest's own eval): present, so
// that modules requiring them at load time still load, but every use
// throws. No partial escape hatches.
const UNAVAILABLE = [
  "child_process", "cluster", "dgram", "dns", "dns/promises", "fs", "fs/promises", "http2", "inspector", "module",
  "net", "perf_hooks", "readline", "repl", "tls", "trace_events", "v8", "vm", "wasi", "worker_threads",
];

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
      if (typeof key !== "string" || key === "then" || key === "__esModule") return undefined;
      let fn = fns.get(key);
      if (fn === undefined) {
        const what = `${name}.${key}`;
        fn = function () {
          throw unavailableError(what);
        };
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

// ---------------------------------------------------------------------------
// Paths (POSIX, absolute: every table path starts with "/").
// ---------------------------------------------------------------------------

function normalize(path) {
  const parts = StringPrototypeSplit(path, "/");
  const out = [];
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i];
    if (p === "" || p === ".") continue;
    if (p === "..") ArrayPrototypePop(out);
    else ArrayPrototypePush(out, p);
  }
  return "/" + ArrayPrototypeJoin(out, "/");
}

function dirname(path) {
  const at = StringPrototypeLastIndexOf(path, "/");
  return at <= 0 ? "/" : StringPrototypeSlice(path, 0, at);
}

function join(a, b) {
  return normalize(a + "/" + b);
}

// ---------------------------------------------------------------------------
// Resolution, as Node's algorithm (LOAD_AS_FILE, LOAD_AS_DIRECTORY,
// LOAD_NODE_MODULES, LOAD_PACKAGE_EXPORTS with the require/node/default
// conditions).
// ---------------------------------------------------------------------------

function asFile(p) {
  if (fileIds.has(p)) return p;
  if (fileIds.has(p + ".js")) return p + ".js";
  if (fileIds.has(p + ".json")) return p + ".json";
  return undefined;
}

function asIndex(p) {
  if (fileIds.has(p + "/index.js")) return p + "/index.js";
  if (fileIds.has(p + "/index.json")) return p + "/index.json";
  return undefined;
}

function asDirectory(p) {
  const pkg = ObjectPrototypeHasOwnProperty(packages, p) ? packages[p] : undefined;
  if (pkg !== undefined && typeof pkg.main === "string") {
    const m = join(p, pkg.main);
    const found = asFile(m) ?? asIndex(m);
    if (found !== undefined) return found;
  }
  return asIndex(p);
}

const CONDITIONS = { __proto__: null, require: true, node: true, default: true };

function exportTarget(target, star) {
  if (typeof target === "string") {
    return star === undefined ? target : ArrayPrototypeJoin(StringPrototypeSplit(target, "*"), star);
  }
  if (target === null || typeof target !== "object") return undefined;
  if (ArrayIsArray(target)) {
    for (let i = 0; i < target.length; i++) {
      const r = exportTarget(target[i], star);
      if (r !== undefined) return r;
    }
    return undefined;
  }
  const keys = ObjectKeys(target);
  for (let i = 0; i < keys.length; i++) {
    if (CONDITIONS[keys[i]]) {
      const r = exportTarget(target[keys[i]], star);
      if (r !== undefined) return r;
    }
  }
  return undefined;
}

function resolveExports(pkgDir, subpath, exports) {
  let map = exports;
  if (typeof exports === "string" || ArrayIsArray(exports)) {
    map = { ".": exports };
  } else if (exports !== null && typeof exports === "object") {
    const keys = ObjectKeys(exports);
    if (keys.length > 0 && !StringPrototypeStartsWith(keys[0], ".")) map = { ".": exports };
  } else {
    return undefined;
  }
  let target;
  if (ObjectPrototypeHasOwnProperty(map, subpath)) {
    target = exportTarget(map[subpath], undefined);
  } else {
    const keys = ObjectKeys(map);
    for (let i = 0; i < keys.length && target === undefined; i++) {
      const key = keys[i];
      const star = StringPrototypeIndexOf(key, "*");
      if (star === -1) continue;
      const prefix = StringPrototypeSlice(key, 0, star);
      const suffix = StringPrototypeSlice(key, star + 1);
      if (StringPrototypeStartsWith(subpath, prefix) && StringPrototypeEndsWith(subpath, suffix) &&
          subpath.length >= key.length - 1) {
        target = exportTarget(map[key], StringPrototypeSlice(subpath, prefix.length, subpath.length - suffix.length));
      }
    }
  }
  if (target === undefined) return undefined;
  const p = join(pkgDir, target);
  return fileIds.has(p) ? p : undefined;
}

function resolveBare(id, fromDir) {
  const slash = StringPrototypeIndexOf(id, "/", id[0] === "@" ? StringPrototypeIndexOf(id, "/") + 1 : 0);
  const name = slash === -1 ? id : StringPrototypeSlice(id, 0, slash);
  const subpath = slash === -1 ? "." : "." + StringPrototypeSlice(id, slash);
  let dir = fromDir;
  for (;;) {
    if (!StringPrototypeEndsWith(dir, "/node_modules")) {
      const base = dir === "/" ? "/node_modules" : dir + "/node_modules";
      const pkgDir = base + "/" + name;
      const pkg = ObjectPrototypeHasOwnProperty(packages, pkgDir) ? packages[pkgDir] : undefined;
      if (pkg !== undefined && pkg.exports !== undefined && pkg.exports !== null) {
        const found = resolveExports(pkgDir, subpath, pkg.exports);
        if (found !== undefined) return found;
      } else {
        const candidate = base + "/" + id;
        const found = asFile(candidate) ?? asDirectory(candidate);
        if (found !== undefined) return found;
      }
    }
    if (dir === "/") return undefined;
    dir = dirname(dir);
  }
}

function notFound(id, why) {
  const err = new ErrorCtor(`Cannot find module '${id}'${why ? ": " + why : ""}`);
  err.code = "MODULE_NOT_FOUND";
  return err;
}

/// The file `id` names when required from a module in `fromDir`.
function resolveFilename(id, fromDir) {
  if (StringPrototypeStartsWith(id, "./") || StringPrototypeStartsWith(id, "../") || id === "." || id === "..") {
    const p = join(fromDir, id);
    return asFile(p) ?? asDirectory(p);
  }
  if (StringPrototypeStartsWith(id, "/")) {
    const p = normalize(id);
    return asFile(p) ?? asDirectory(p);
  }
  return resolveBare(id, fromDir);
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

function Module(id, parent) {
  this.id = id;
  this.path = dirname(id);
  this.filename = id;
  this.exports = {};
  this.parent = parent;
  this.loaded = false;
  this.children = [];
  this.paths = [];
}

function load(filename, parent) {
  const cached = cache[filename];
  if (cached !== undefined) return cached.exports;
  const module = new Module(filename, parent);
  if (parent && parent.children) ArrayPrototypePush(parent.children, module);
  cache[filename] = module;
  let ok = false;
  try {
    const n = fileIds.get(filename);
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
    if (!ObjectPrototypeHasOwnProperty(moduleSet, name)) {
      throw notFound(id, `${name} is not in webtask's module set`);
    }
    const installed = moduleSet[name];
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
  const fromDir = parent ? parent.path : "/";
  const filename = resolveFilename(id, fromDir);
  if (filename === undefined) throw notFound(id, "");
  return load(filename, parent);
}

function makeRequire(module) {
  const require = function require(id) {
    return requireFrom(id, module);
  };
  require.resolve = function resolve(id) {
    if (typeof id !== "string") throw new TypeErrorCtor(`The "request" argument must be of type string`);
    if (isBuiltin(id)) return id;
    const versioned = splitVersion(id);
    const filename = resolveFilename(versioned ? versioned[0] : id, module ? module.path : "/");
    if (filename === undefined) throw notFound(id, "");
    return filename;
  };
  require.cache = cache;
  require.main = undefined;
  return require;
}

/// The `module` and `require` a webtask's own code gets: it is `/webtask.js`,
/// so bare names resolve in `/node_modules`, where the set is.
export function webtaskModule() {
  const module = new Module("/webtask.js", null);
  module.loaded = true;
  const require = makeRequire(module);
  module.require = require;
  return { module, require };
}
