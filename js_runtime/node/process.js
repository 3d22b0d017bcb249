// The sanitised `process` (global and built-in), `performance` (global and
// `perf_hooks`) and `os`: what Node code reads to find its footing, with
// nothing of the host in it. `env` is empty, `exit` and `kill` throw instead
// of ending anything, the clock is the guest's Date (millisecond resolution,
// monotonic: a coarse clock is also a poor timer for side channels), and
// `os` reports harmless constants.

import {
  builtin,
  codedError,
  illegalConstructor,
  isBuiltin,
  received,
  registerBuiltin,
  unavailableError,
} from "ext:webtask_runtime/node/require.js";
import { DOMException, structuredClone } from "ext:webtask_runtime/node/web.js";

const {
  ArrayFrom,
  ArrayIsArray,
  ArrayPrototypeFilter,
  ArrayPrototypeIncludes,
  ArrayPrototypeSlice,
  ArrayPrototypePush,
  BigInt: BigIntCtor,
  DateNow,
  MathFloor,
  ObjectFreeze,
  ObjectCreate,
  ObjectDefineProperty,
  ArrayPrototypeSort,
  ReflectApply,
  SafeArrayIterator,
  SafeSet,
  String: StringCtor,
  Symbol: SymbolCtor,
  SymbolFor,
  SymbolToStringTag,
  StringPrototypeSlice,
  StringPrototypeStartsWith,
  TypeError: TypeErrorCtor,
} = globalThis.__bootstrap.primordials;
const nativeQueueMicrotask = globalThis.queueMicrotask;

export const NODE_VERSION = "v20.18.0";

const start = DateNow();
let last = 0;
// Milliseconds since the isolate's process started, never going back.
function nowMs() {
  const t = DateNow() - start;
  if (t > last) last = t;
  return last;
}

function hrtime(prev) {
  const ms = nowMs();
  let sec = MathFloor(ms / 1000);
  let ns = (ms - sec * 1000) * 1e6;
  if (prev !== undefined) {
    if (!ArrayIsArray(prev) || prev.length !== 2) {
      throw new TypeErrorCtor('The "time" argument must be an instance of Array of length 2');
    }
    sec -= prev[0];
    ns -= prev[1];
    if (ns < 0) {
      sec--;
      ns += 1e9;
    }
  }
  return [sec, ns];
}
hrtime.bigint = () => BigIntCtor(nowMs()) * 1000000n;

// `performance`: Node's clock API on the same coarse clock as `hrtime`
// (milliseconds since the process started), with marks and measures. The
// entries are the container's own, kept until it clears them, as in Node.
const entries = [];

function entryTime(value) {
  if (value === undefined) return nowMs();
  if (typeof value === "number") return value;
  const mark = findMark(value);
  if (mark === undefined) throw new DOMException(`The "${value}" performance mark has not been set`, "SyntaxError");
  return mark.startTime;
}

function findMark(name) {
  for (let i = entries.length - 1; i >= 0; i--) {
    if (entries[i].entryType === "mark" && entries[i].name === name) return entries[i];
  }
  return undefined;
}

// The entry classes and Performance, globals in Node 20: an entry's
// fields are getters (own keys: none), `detail` a structured clone taken
// when it is made, util.inspect shows `PerformanceMark { name, ... }`.
// Only PerformanceMark is constructible (it then joins no timeline).
const kCreate = SymbolCtor("create");
const kInspect = SymbolFor("nodejs.util.inspect.custom");

function cloneDetail(detail) {
  return detail === undefined || detail === null ? null : structuredClone(detail);
}

export class PerformanceEntry {
  #name;
  #entryType;
  #startTime;
  #duration;

  constructor(token, name, entryType, startTime, duration) {
    if (token !== kCreate) throw illegalConstructor();
    this.#name = `${name}`;
    this.#entryType = entryType;
    this.#startTime = startTime;
    this.#duration = duration;
  }

  get name() {
    return this.#name;
  }

  get entryType() {
    return this.#entryType;
  }

  get startTime() {
    return this.#startTime;
  }

  get duration() {
    return this.#duration;
  }

  toJSON() {
    return { name: this.#name, entryType: this.#entryType, startTime: this.#startTime, duration: this.#duration };
  }

  [kInspect](depth, options, inspect) {
    if (depth < 0) return this;
    const opts = { ...options, depth: options.depth == null ? null : options.depth - 1 };
    return `${this.constructor.name} ${inspect(this.toJSON(), opts)}`;
  }
}

export class PerformanceMark extends PerformanceEntry {
  #detail;

  constructor(name, options) {
    needArgs(arguments, '"name"');
    let startTime = options?.startTime;
    if (startTime === undefined) startTime = nowMs();
    else if (typeof startTime !== "number") {
      const shown = typeof startTime === "string" ? `'${startTime}'` : typeof startTime === "object" ? "an object" : StringCtor(startTime);
      throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "startTime" argument must be of type number. Received type ${typeof startTime} (${shown})`);
    } else if (!(startTime >= 0)) {
      throw codedError(TypeErrorCtor, "ERR_PERFORMANCE_INVALID_TIMESTAMP", `${startTime} is not a valid timestamp`);
    }
    const detail = cloneDetail(options?.detail);
    super(kCreate, name, "mark", startTime, 0);
    this.#detail = detail;
  }

  get detail() {
    return this.#detail;
  }

  toJSON() {
    return { ...super.toJSON(), detail: this.#detail };
  }
}

export class PerformanceMeasure extends PerformanceEntry {
  #detail;

  constructor(token, name, startTime, duration, detail) {
    if (token !== kCreate) throw illegalConstructor();
    super(kCreate, name, "measure", startTime, duration);
    this.#detail = cloneDetail(detail);
  }

  get detail() {
    return this.#detail;
  }

  toJSON() {
    return { ...super.toJSON(), detail: this.#detail };
  }
}

// The timeline, oldest start first (entries starting together in the
// order they were made), as Node returns it.
function sorted(kept) {
  return ArrayPrototypeSort(kept, (a, b) => a.startTime - b.startTime);
}

function clear(entryType) {
  return function (name) {
    const kept = ArrayPrototypeFilter(entries, (e) => e.entryType !== entryType || (name !== undefined && e.name !== name));
    entries.length = 0;
    for (const e of kept) ArrayPrototypePush(entries, e);
  };
}

function needArgs(args, name) {
  if (args.length === 0) throw codedError(TypeErrorCtor, "ERR_MISSING_ARGS", `The ${name} argument must be specified`);
}

export class Performance {
  constructor() {
    throw illegalConstructor();
  }

  get timeOrigin() {
    return start;
  }

  now() {
    return nowMs();
  }

  mark(name, options) {
    needArgs(arguments, '"name"');
    const e = new PerformanceMark(name, options);
    ArrayPrototypePush(entries, e);
    enqueue(e);
    return e;
  }

  measure(name, startOrOptions, endMark) {
    needArgs(arguments, '"name"');
    let start, end, detail;
    if (startOrOptions !== null && typeof startOrOptions === "object") {
      const { start: from, end: to, duration } = startOrOptions;
      if (from !== undefined && to !== undefined && duration !== undefined) {
        throw codedError(TypeErrorCtor, "ERR_PERFORMANCE_MEASURE_INVALID_OPTIONS", "Must not have options.start, options.end, and options.duration specified");
      }
      // Node's order: the end from `end`, or `start` + `duration`, or now;
      // the start from `start`, or end - `duration`, or the time origin.
      end = to !== undefined ? entryTime(to) : from !== undefined && duration !== undefined ? entryTime(from) + duration : nowMs();
      start = from !== undefined ? entryTime(from) : duration !== undefined ? end - duration : 0;
      detail = startOrOptions.detail;
    } else {
      start = startOrOptions === undefined || startOrOptions === null ? 0 : entryTime(startOrOptions);
      end = entryTime(endMark);
    }
    const e = new PerformanceMeasure(kCreate, name, start, end - start, detail);
    ArrayPrototypePush(entries, e);
    enqueue(e);
    return e;
  }

  getEntries() {
    return sorted(ArrayPrototypeFilter(entries, () => true));
  }

  getEntriesByName(name, type) {
    return sorted(ArrayPrototypeFilter(entries, (e) => e.name === name && (type === undefined || e.entryType === type)));
  }

  getEntriesByType(type) {
    return sorted(ArrayPrototypeFilter(entries, (e) => e.entryType === type));
  }

  clearMarks(name) {
    clearMarks(name);
  }

  clearMeasures(name) {
    clearMeasures(name);
  }

  toJSON() {
    return { timeOrigin: start };
  }
}
ObjectDefineProperty(Performance.prototype, SymbolToStringTag, { __proto__: null, value: "Performance", configurable: true });
const clearMarks = clear("mark");
const clearMeasures = clear("measure");

// Observers of the timeline, as Node 20's: an entry of a type an observer
// watches is buffered for it, and the observers with entries are called
// back together on a later turn (setImmediate, so the callback runs as the
// guest's own timer would). Only marks and measures are ever made here;
// the other types Node lists are accepted and stay quiet, as they do in a
// Node process that makes none.
const SUPPORTED_ENTRY_TYPES = ObjectFreeze(["dns", "function", "gc", "http", "http2", "mark", "measure", "net", "resource"]);
const observing = new SafeSet();
const pending = new SafeSet();
let dispatchQueued = false;

function enqueue(entry) {
  for (const observer of new SafeArrayIterator(ArrayFrom(observing))) observer[kBufferEntry](entry);
}

// The runtime's setImmediate (bootstrap hands it over): a guest's own
// replacement must neither see the dispatch nor be able to stop it.
let setImmediateOfRuntime;
export function provideSetImmediate(fn) {
  setImmediateOfRuntime = fn;
}

function queueDispatch() {
  if (dispatchQueued) return;
  setImmediateOfRuntime(() => {
    dispatchQueued = false;
    const due = ArrayFrom(pending);
    pending.clear();
    for (const observer of new SafeArrayIterator(due)) observer[kDispatch]();
  });
  dispatchQueued = true;
}

const kBufferEntry = SymbolCtor("buffer entry");
const kDispatch = SymbolCtor("dispatch");

// The two classes, made on first use (a global's first read or
// `require("perf_hooks")`) rather than kept in every isolate's snapshot.
let observerClassesMade;
export function observerClasses() {
  if (observerClassesMade) return observerClassesMade;

  class PerformanceObserverEntryList {
    #entries;

    constructor(token, entries) {
      if (token !== kCreate) throw illegalConstructor();
      this.#entries = sorted(entries);
    }

    getEntries() {
      return ArrayPrototypeSlice(this.#entries);
    }

    getEntriesByType(type) {
      needArgs(arguments, '"type"');
      type = `${type}`;
      return ArrayPrototypeFilter(this.#entries, (e) => e.entryType === type);
    }

    getEntriesByName(name, type) {
      needArgs(arguments, '"name"');
      name = `${name}`;
      // A null type is no type, as in Node.
      if (type === null) type = undefined;
      if (type !== undefined) type = `${type}`;
      return ArrayPrototypeFilter(this.#entries, (e) => e.name === name && (type === undefined || e.entryType === type));
    }
  }
  ObjectDefineProperty(PerformanceObserverEntryList.prototype, SymbolToStringTag, { __proto__: null, value: "PerformanceObserverEntryList", configurable: true });

  class PerformanceObserver {
    #callback;
    #buffer = [];
    #entryTypes = new SafeSet();
    // "single" once observing with `type`, "multiple" with `entryTypes`.
    #mode;

    constructor(callback) {
      if (typeof callback !== "function") {
        throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "callback" argument must be of type function. Received ${received(callback)}`);
      }
      this.#callback = callback;
    }

    static get supportedEntryTypes() {
      return SUPPORTED_ENTRY_TYPES;
    }

    observe(options = {}) {
      if (options === null || typeof options !== "object") {
        throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "options" argument must be of type object. Received ${received(options)}`);
      }
      const { entryTypes, type, buffered } = { ...options };
      if (entryTypes === undefined && type === undefined) {
        throw codedError(TypeErrorCtor, "ERR_MISSING_ARGS", 'The "options.entryTypes" and "options.type" arguments must be specified');
      }
      if (entryTypes != null && type != null) {
        throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_VALUE", `The property 'options.entryTypes' options.entryTypes can not set with options.type together. Received ${builtin("util").inspect(entryTypes)}`);
      }
      const mode = entryTypes !== undefined ? "multiple" : "single";
      if (this.#mode !== undefined && this.#mode !== mode) {
        const to = mode === "multiple" ? "multiple observations" : "single observation";
        throw new DOMException(`PerformanceObserver can not change to ${to}`, "InvalidModificationError");
      }
      this.#mode = mode;
      if (mode === "multiple") {
        if (!ArrayIsArray(entryTypes)) {
          throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "options.entryTypes" property must be string[]. Received ${received(entryTypes)}`);
        }
        this.#entryTypes.clear();
        for (const t of new SafeArrayIterator(entryTypes)) if (ArrayPrototypeIncludes(SUPPORTED_ENTRY_TYPES, t)) this.#entryTypes.add(t);
      } else {
        if (!ArrayPrototypeIncludes(SUPPORTED_ENTRY_TYPES, type)) return;
        this.#entryTypes.add(type);
        if (buffered) {
          for (const e of new SafeArrayIterator(performance.getEntriesByType(type))) ArrayPrototypePush(this.#buffer, e);
          pending.add(this);
          queueDispatch();
        }
      }
      if (this.#entryTypes.size) observing.add(this);
      else this.disconnect();
    }

    disconnect() {
      observing.delete(this);
      pending.delete(this);
      this.#buffer = [];
      this.#entryTypes.clear();
      this.#mode = undefined;
    }

    takeRecords() {
      const taken = this.#buffer;
      this.#buffer = [];
      return taken;
    }

    [kBufferEntry](entry) {
      if (!this.#entryTypes.has(entry.entryType)) return;
      ArrayPrototypePush(this.#buffer, entry);
      pending.add(this);
      queueDispatch();
    }

    [kDispatch]() {
      this.#callback(new PerformanceObserverEntryList(kCreate, this.takeRecords()), this);
    }

    [kInspect](depth, options, inspect) {
      if (depth < 0) return this;
      const opts = { ...options, depth: options.depth == null ? null : options.depth - 1 };
      const state = { connected: observing.has(this), pending: pending.has(this), entryTypes: ArrayFrom(this.#entryTypes), buffer: this.#buffer };
      return `PerformanceObserver ${inspect(state, opts)}`;
    }
  }
  ObjectDefineProperty(PerformanceObserver.prototype, SymbolToStringTag, { __proto__: null, value: "PerformanceObserver", configurable: true });
  // Their methods are enumerable, as Node's are (WebIDL).
  const methods = [[PerformanceObserver, ["observe", "disconnect", "takeRecords"]], [PerformanceObserverEntryList, ["getEntries", "getEntriesByType", "getEntriesByName"]]];
  for (const { 0: Class, 1: names } of new SafeArrayIterator(methods)) {
    for (const name of new SafeArrayIterator(names)) ObjectDefineProperty(Class.prototype, name, { __proto__: null, enumerable: true });
  }
  observerClassesMade = { PerformanceObserver, PerformanceObserverEntryList };
  return observerClassesMade;
}

export const performance = ObjectCreate(Performance.prototype);
registerBuiltin("perf_hooks", () => ({
  performance,
  Performance,
  PerformanceEntry,
  PerformanceMark,
  PerformanceMeasure,
  constants: ObjectFreeze({ NODE_PERFORMANCE_GC_MAJOR: 4, NODE_PERFORMANCE_GC_MINOR: 1, NODE_PERFORMANCE_GC_INCREMENTAL: 8, NODE_PERFORMANCE_GC_WEAKCB: 16 }),
  ...observerClasses(),
  monitorEventLoopDelay() {
    throw unavailableError("perf_hooks.monitorEventLoopDelay");
  },
  createHistogram() {
    throw unavailableError("perf_hooks.createHistogram");
  },
}));

function nextTick(callback, ...args) {
  if (typeof callback !== "function") {
    throw new TypeErrorCtor('The "callback" argument must be of type function');
  }
  nativeQueueMicrotask(() => ReflectApply(callback, undefined, args));
}

function noListeners() {
  return process;
}

function write(level) {
  return function (chunk, encoding, cb) {
    globalThis.console[level](typeof chunk === "string" ? chunk.replace(/\n$/, "") : String(chunk));
    if (typeof encoding === "function") encoding();
    else if (typeof cb === "function") cb();
    return true;
  };
}

export const process = {
  title: "webtask",
  version: NODE_VERSION,
  versions: { node: "20.18.0", v8: "15.0", modules: "115", webtask: "1" },
  release: { name: "node", lts: "Iron" },
  platform: "linux",
  arch: "x64",
  argv: ["/usr/local/bin/node", "/webtask.js"],
  argv0: "node",
  execArgv: [],
  execPath: "/usr/local/bin/node",
  env: {},
  pid: 1,
  ppid: 0,
  exitCode: undefined,
  features: {},
  config: { variables: {} },
  browser: false,
  hrtime,
  nextTick,
  cwd: () => "/",
  chdir() {
    throw unavailableError("process.chdir");
  },
  umask: () => 0o22,
  uptime: () => nowMs() / 1000,
  memoryUsage: () => ({ rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }),
  cpuUsage: () => ({ user: 0, system: 0 }),
  resourceUsage: () => ({
    userCPUTime: 0, systemCPUTime: 0, maxRSS: 0, sharedMemorySize: 0, unsharedDataSize: 0, unsharedStackSize: 0,
    minorPageFault: 0, majorPageFault: 0, swappedOut: 0, fsRead: 0, fsWrite: 0, ipcSent: 0, ipcReceived: 0,
    signalsCount: 0, voluntaryContextSwitches: 0, involuntaryContextSwitches: 0,
  }),
  // Node 20.16's way to reach a built-in without require (ESM code and
  // bundles use it to tell Node from a browser).
  getBuiltinModule(id) {
    if (typeof id !== "string") {
      throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "id" argument must be of type string. Received ${received(id)}`);
    }
    if (!isBuiltin(id)) return undefined;
    return builtin(StringPrototypeStartsWith(id, "node:") ? StringPrototypeSlice(id, 5) : id);
  },
  hasUncaughtExceptionCaptureCallback: () => false,
  setUncaughtExceptionCaptureCallback() {
    throw unavailableError("process.setUncaughtExceptionCaptureCallback");
  },
  getActiveResourcesInfo: () => [],
  sourceMapsEnabled: false,
  setSourceMapsEnabled() {},
  emitWarning(warning) {
    globalThis.console.warn(typeof warning === "string" ? "Warning: " + warning : String(warning));
  },
  exit() {
    throw unavailableError("process.exit");
  },
  abort() {
    throw unavailableError("process.abort");
  },
  kill() {
    throw unavailableError("process.kill");
  },
  binding() {
    throw unavailableError("process.binding");
  },
  dlopen() {
    throw unavailableError("process.dlopen");
  },
  getuid: () => 1000,
  getgid: () => 1000,
  geteuid: () => 1000,
  getegid: () => 1000,
  on: noListeners,
  once: noListeners,
  off: noListeners,
  addListener: noListeners,
  removeListener: noListeners,
  removeAllListeners: noListeners,
  prependListener: noListeners,
  emit: () => false,
  listeners: () => [],
  listenerCount: () => 0,
  stdout: { write: write("log"), isTTY: false, fd: 1 },
  stderr: { write: write("error"), isTTY: false, fd: 2 },
};
process.stdin = { isTTY: false, fd: 0, on: noListeners };
// Object.prototype.toString says "[object process]", as in Node (axios picks
// its Node adapter by it).
Object.defineProperty(process, Symbol.toStringTag, { value: "process", configurable: true });
registerBuiltin("process", () => process);

const os = {
  EOL: "\n",
  devNull: "/dev/null",
  arch: () => "x64",
  platform: () => "linux",
  type: () => "Linux",
  release: () => "6.0.0-webtask",
  version: () => "webtask",
  machine: () => "x86_64",
  hostname: () => "webtask",
  homedir: () => "/",
  tmpdir: () => "/tmp",
  endianness: () => "LE",
  cpus: () => [],
  availableParallelism: () => 1,
  totalmem: () => 0,
  freemem: () => 0,
  uptime: () => MathFloor(nowMs() / 1000),
  loadavg: () => [0, 0, 0],
  networkInterfaces: () => ({}),
  userInfo: () => ({ uid: 1000, gid: 1000, username: "webtask", homedir: "/", shell: null }),
  getPriority: () => 0,
  setPriority() {
    throw unavailableError("os.setPriority");
  },
  constants: ObjectFreeze({ signals: ObjectFreeze({}), errno: ObjectFreeze({}), priority: ObjectFreeze({}) }),
};
registerBuiltin("os", () => os);
