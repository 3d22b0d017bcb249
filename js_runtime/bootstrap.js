// webtask's guest-facing runtime, evaluated once into the startup snapshot.
//
// It owns the programming model (how a webtask function is called and how
// its result reaches the host) and the globals guest code sees (console,
// timers). With the Node shim's modules (js_runtime/node/, which keep what
// they need of `Deno.core` in their own closures) it is the only code that
// holds `Deno.core`: `lockdown()` is called
// once per isolate by the host, captures what the runner needs in this
// module's closure and deletes every host object from the global, so guest
// code can reach nothing but its own global.
//
// Guest code shares this realm and may replace any built-in method
// (`Function.prototype.call`, `Map.prototype.set`, `String.prototype.split`
// ...). So everything below calls built-ins only through the primordials
// captured before any guest code ran, reads guest-supplied objects only
// inside try/catch, and never hands an internal object to guest code.
//
// Everything here is strict mode (an ES module), so V8 hides these functions
// and their receivers from guest `Error.prepareStackTrace` call sites.
//
// What every isolate runs at creation or on its first request is written
// `const f = (function f() {...})`: the parentheses are V8's hint to compile
// a function with its script, so its bytecode is in the snapshot. Left lazy,
// every new isolate compiled them again (about 1 ms, measured with
// `--log-function-events`).

import { builtin, codedError, registerBuiltin, webtaskModule } from "ext:webtask_runtime/node/require.js";
import {
  performance,
  Performance,
  PerformanceEntry,
  PerformanceMark,
  PerformanceMeasure,
  observerClasses,
  process as guestProcess,
  provideSetImmediate,
} from "ext:webtask_runtime/node/process.js";
import "ext:webtask_runtime/node/crypto.js";
import "ext:webtask_runtime/node/zlib.js";
import { incomingMessage, provideServerResponse } from "ext:webtask_runtime/node/http.js";
import * as web from "ext:webtask_runtime/node/web.js";

const core = globalThis.Deno.core;
const primordials = globalThis.__bootstrap.primordials;
const {
  op_wt_complete,
  op_wt_fail,
  op_wt_head,
  op_wt_write,
  op_wt_end,
  op_wt_console,
} = core.ops;
const { getAsyncContext, setAsyncContext, createTimer, cancelTimer } = core;
const {
  ArrayBufferIsView,
  ArrayIsArray,
  ArrayPrototypeIndexOf,
  ArrayPrototypeJoin,
  ArrayPrototypePop,
  ArrayPrototypePush,
  BigIntPrototypeToString,
  DatePrototypeToISOString,
  FunctionPrototypeToString,
  MapPrototypeForEach,
  MapPrototypeGetSize,
  Number: NumberCtor,
  NumberParseFloat,
  NumberParseInt,
  ObjectGetOwnPropertyDescriptor,
  ObjectIs,
  RegExpPrototypeToString,
  SetPrototypeForEach,
  SetPrototypeGetSize,
  StringPrototypeCharCodeAt,
  SymbolPrototypeToString,
  Error: ErrorCtor,
  JSONStringify,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectGetPrototypeOf,
  ObjectSetPrototypeOf,
  ObjectKeys,
  ObjectPrototypeToString,
  ObjectPrototypeHasOwnProperty,
  ObjectAssign,
  DateNow,
  MathFloor,
  MathMax,
  NumberPrototypeToFixed,
  StringPrototypeRepeat,
  PromisePrototypeThen,
  PromiseResolve,
  ReflectApply,
  SafeMap,
  String: StringCtor,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  StringFromCharCode,
  SafeSet,
  ObjectGetOwnPropertyNames,
  StringPrototypePadStart,
  NumberPrototypeToString,
  FunctionPrototypeCall,
  SymbolFor,
  JSONParse,
  TypeError: TypeErrorCtor,
  Uint8Array: Uint8ArrayCtor,
  ArrayBuffer: ArrayBufferCtor,
  Proxy: ProxyCtor,
  RangeError: RangeErrorCtor,
  ReflectConstruct,
} = primordials;
const AsyncFunctionProto = ObjectGetPrototypeOf(async function () {});


const { queueMicrotask } = globalThis;

// Set by lockdown() from the host's limits.
let responseLimit = 8 * 1024 * 1024;
// Longest string any error field may carry to the host.
const MAX_ERROR_TEXT = 64 * 1024;

// ---------------------------------------------------------------------------
// Errors crossing to the host: name, message, details and stack. The host's
// prepare-stack-trace hook already keeps only the webtask's own frames.
// ---------------------------------------------------------------------------

function clip(s) {
  return s.length > MAX_ERROR_TEXT
    ? StringPrototypeSlice(s, 0, MAX_ERROR_TEXT) + "... [truncated]"
    : s;
}

// String(value) that never throws and never runs for long on huge inputs.
function safeString(value) {
  try {
    return clip(StringCtor(value));
  } catch {
    try {
      return ObjectPrototypeToString(value);
    } catch {
      return "[unprintable value]";
    }
  }
}

// Reads `obj[key]` as a string; a throwing getter yields `fallback`.
function field(obj, key, fallback) {
  try {
    const v = obj[key];
    return v === undefined ? fallback : safeString(v);
  } catch {
    return fallback;
  }
}

// [name, message, stack, details] of any thrown value.
function describe(err) {
  let isError = false;
  try {
    isError = err instanceof ErrorCtor ||
      (err !== null && typeof err === "object" && typeof err.message === "string");
  } catch {
    // a Proxy or getter that throws: treat as a plain value
  }
  if (isError) {
    const name = field(err, "name", "Error");
    const message = field(err, "message", "");
    const stack = field(err, "stack", "");
    return [name, message, stack, name + ": " + message];
  }
  const message = safeString(err);
  return ["", message, "", message];
}

function fail(id, err) {
  const d = describe(err);
  op_wt_fail(id, d[0], d[1], d[2], d[3]);
}

const succeed = (function succeed(id, value) {
  let json;
  try {
    json = JSONStringify(value);
  } catch (e) {
    fail(id, e);
    return;
  }
  op_wt_complete(id, json ?? "null");
});

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

// console.* arguments formatted as Node's util.format does: printf-style
// specifiers in a leading string (%s %d %i %f %j %o %O %c %%), remaining
// arguments appended with a space, strings as they are and anything else
// through inspect(). Output stays on one line (Node breaks long objects
// over several); every guest value is read inside try/catch.

const INSPECT_DEPTH = 2;
const INSPECT_ITEMS = 100;

function format(args) {
  if (args.length === 0) return "";
  let out = "";
  let next = 0;
  const first = args[0];
  if (typeof first === "string") {
    // Alone, a string is printed as it is (`%%` included), as in Node.
    if (args.length === 1) return first;
    next = 1;
    let last = 0;
    for (let i = 0; i < first.length - 1; i++) {
      if (StringPrototypeCharCodeAt(first, i) !== 37) continue; // '%'
      const spec = first[i + 1];
      let piece;
      if (spec === "%") {
        piece = "%";
      } else if (next < args.length && StringPrototypeIndexOf("sdifjoOc", spec) !== -1) {
        piece = specifier(spec, args[next++]);
      } else {
        continue;
      }
      out += StringPrototypeSlice(first, last, i) + piece;
      last = i + 2;
      i++;
    }
    out += StringPrototypeSlice(first, last);
  }
  for (; next < args.length; next++) {
    const arg = args[next];
    const text = typeof arg === "string" ? arg : inspect(arg, 0, []);
    out = out === "" && next === 0 ? text : out + " " + text;
  }
  return out;
}

function specifier(spec, arg) {
  try {
    switch (spec) {
      case "s":
        if (typeof arg === "bigint") return BigIntPrototypeToString(arg) + "n";
        if (typeof arg === "symbol") return SymbolPrototypeToString(arg);
        if (typeof arg === "object" && arg !== null && hasBuiltInToString(arg)) return inspect(arg, 1, []);
        return safeString(arg);
      case "d":
        if (typeof arg === "bigint") return BigIntPrototypeToString(arg) + "n";
        if (typeof arg === "symbol" || (typeof arg === "object" && arg !== null)) return "NaN";
        return formatNumber(NumberCtor(arg));
      case "i":
        if (typeof arg === "bigint") return BigIntPrototypeToString(arg) + "n";
        if (typeof arg === "symbol") return "NaN";
        return formatNumber(NumberParseInt(arg));
      case "f":
        if (typeof arg === "symbol") return "NaN";
        return formatNumber(NumberParseFloat(arg));
      case "j":
        try {
          return JSONStringify(arg) ?? "undefined";
        } catch {
          return "[Circular]";
        }
      case "o":
      case "O":
        return inspect(arg, 0, []);
      case "c":
        return "";
    }
  } catch {
    // A throwing toString or getter: fall through.
  }
  return safeString(arg);
}

function formatNumber(n) {
  return ObjectIs(n, -0) ? "-0" : StringCtor(n);
}

// util.inspect, one line: strings quoted inside structures, objects to
// INSPECT_DEPTH levels, at most INSPECT_ITEMS entries each, cycles marked.
function inspect(value, depth, seen) {
  try {
    switch (typeof value) {
      case "string":
        return depth === 0 ? value : quote(value);
      case "number":
        return formatNumber(value);
      case "bigint":
        return BigIntPrototypeToString(value) + "n";
      case "symbol":
        return SymbolPrototypeToString(value);
      case "undefined":
        return "undefined";
      case "boolean":
        return value ? "true" : "false";
      case "function":
        return inspectFunction(value);
    }
    if (value === null) return "null";
    return inspectObject(value, depth, seen);
  } catch {
    return safeString(value);
  }
}

// Quoting and the identifier test walk characters: a RegExp method would
// dispatch through RegExp.prototype, which guest code may have replaced.
// As Node's strEscape: single quotes unless the string has one (then
// double, or backticks if it has both), control characters escaped.
function quote(s) {
  let q = 39; // '
  if (StringPrototypeIndexOf(s, "'") !== -1) {
    if (StringPrototypeIndexOf(s, '"') === -1) q = 34;
    else if (StringPrototypeIndexOf(s, "`") === -1 && StringPrototypeIndexOf(s, "${") === -1) q = 96;
  }
  const mark = StringFromCharCode(q);
  let out = mark;
  let last = 0;
  for (let i = 0; i < s.length; i++) {
    const c = StringPrototypeCharCodeAt(s, i);
    let escaped;
    if (c === q || c === 92) escaped = "\\" + StringFromCharCode(c);
    else if (c < 32 || c === 127) escaped = CONTROL_ESCAPES[c] ?? "\\x" + StringPrototypeToUpperCase(StringPrototypePadStart(NumberPrototypeToString(c, 16), 2, "0"));
    else continue;
    out += StringPrototypeSlice(s, last, i) + escaped;
    last = i + 1;
  }
  return out + StringPrototypeSlice(s, last) + mark;
}
const CONTROL_ESCAPES = { __proto__: null, 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r" };

function isIdentifier(key) {
  if (key.length === 0) return false;
  for (let i = 0; i < key.length; i++) {
    const c = StringPrototypeCharCodeAt(key, i);
    const letter = (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 36;
    if (!letter && !(i > 0 && c >= 48 && c <= 57)) return false;
  }
  return true;
}

function inspectFunction(fn) {
  let name = "";
  try {
    name = typeof fn.name === "string" ? fn.name : "";
  } catch {}
  let source = "";
  try {
    source = FunctionPrototypeToString(fn);
  } catch {}
  if (StringPrototypeSlice(source, 0, 6) === "class ") {
    return name ? "[class " + name + "]" : "[class (anonymous)]";
  }
  return name ? "[Function: " + name + "]" : "[Function (anonymous)]";
}

function tag(value) {
  return ObjectPrototypeToString(value);
}

function inspectObject(value, depth, seen) {
  if (ArrayPrototypeIndexOf(seen, value) !== -1) return "[Circular]";
  // `[util.inspect.custom]`, as Node calls it (Buffer's `<Buffer 61 62>`,
  // URL, moment, a library's own types): with the depth left, options,
  // and an inspect of this formatter's.
  const custom = value[kInspectCustom];
  if (typeof custom === "function") {
    const shown = FunctionPrototypeCall(custom, value, INSPECT_DEPTH - depth, customOptions(INSPECT_DEPTH - depth), inspectForCustom);
    if (shown !== value) return typeof shown === "string" ? shown : inspect(shown, depth, seen);
  }
  const t = tag(value);
  if (value instanceof ErrorCtor) return field(value, "stack", safeString(value));
  if (t === "[object Date]") return DatePrototypeToISOString(value);
  if (t === "[object RegExp]") return RegExpPrototypeToString(value);
  const isArray = ArrayIsArray(value);
  if (depth > INSPECT_DEPTH) {
    if (isArray) return "[Array]";
    return "[" + (constructorName(value) || "Object") + "]";
  }
  ArrayPrototypePush(seen, value);
  try {
    if (isArray) return inspectArray(value, depth, seen);
    if (ArrayBufferIsView(value) && t !== "[object DataView]") return inspectTyped(value, depth, seen);
    if (t === "[object Map]") return inspectMap(value, depth, seen);
    if (t === "[object Set]") return inspectSet(value, depth, seen);
    return inspectPlain(value, depth, seen);
  } finally {
    ArrayPrototypePop(seen);
  }
}

const kInspectCustom = SymbolFor("nodejs.util.inspect.custom");

function inspectForCustom(value) {
  return inspect(value, 1, []);
}

// The options Node hands a custom inspector (no colours: a log line).
function customOptions(depth) {
  return {
    depth,
    colors: false,
    customInspect: true,
    showHidden: false,
    showProxy: false,
    maxArrayLength: INSPECT_ITEMS,
    maxStringLength: 10000,
    breakLength: Infinity,
    compact: 3,
    sorted: false,
    getters: false,
    numericSeparator: false,
    stylize: (text) => text,
  };
}

// As Node's getConstructorName: the first `constructor` up the chain that
// `value` is an instance of ("" when there is none; null for a null
// prototype). `{ __proto__: { constructor: URL } }` is not a URL.
function constructorName(value) {
  try {
    let proto = ObjectGetPrototypeOf(value);
    if (proto === null) return null;
    for (; proto !== null; proto = ObjectGetPrototypeOf(proto)) {
      const ctor = ObjectGetOwnPropertyDescriptor(proto, "constructor");
      const name = ctor && typeof ctor.value === "function" ? ctor.value.name : "";
      if (typeof name === "string" && name !== "" && isInstance(value, ctor.value)) return name;
    }
    return "";
  } catch {
    return "";
  }
}

function isInstance(value, ctor) {
  try {
    return value instanceof ctor;
  } catch {
    return false;
  }
}

// Node's hasBuiltInToString, for `%s`: an object whose toString is its
// own or a non-built-in class's is printed with it, others inspected.
// The built-ins: the global constructors V8 made (captured before any
// webtask global exists, as Node captures them at its start).
const BUILT_IN_NAMES = new SafeSet();
for (const name of ObjectGetOwnPropertyNames(globalThis)) {
  const c = StringPrototypeCharCodeAt(name, 0);
  if (c >= 65 && c <= 90 && typeof globalThis[name] === "function") BUILT_IN_NAMES.add(name);
}

function hasBuiltInToString(value) {
  try {
    if (typeof value.toString !== "function") return true;
    if (ObjectPrototypeHasOwnProperty(value, "toString")) return false;
    let pointer = value;
    do {
      pointer = ObjectGetPrototypeOf(pointer);
    } while (pointer !== null && !ObjectPrototypeHasOwnProperty(pointer, "toString"));
    if (pointer === null) return true;
    const ctor = ObjectGetOwnPropertyDescriptor(pointer, "constructor");
    return ctor !== undefined && typeof ctor.value === "function" && BUILT_IN_NAMES.has(ctor.value.name);
  } catch {
    return true;
  }
}

function braces(prefix, open, close, items) {
  if (items.length === 0) return prefix + open + close;
  return prefix + open + " " + ArrayPrototypeJoin(items, ", ") + " " + close;
}

function more(items, n) {
  if (n > 0) ArrayPrototypePush(items, "... " + n + " more item" + (n === 1 ? "" : "s"));
}

function inspectArray(arr, depth, seen) {
  const items = [];
  const len = arr.length;
  const shown = len < INSPECT_ITEMS ? len : INSPECT_ITEMS;
  for (let i = 0; i < shown; i++) {
    if (i in arr) {
      ArrayPrototypePush(items, inspect(arr[i], depth + 1, seen));
      continue;
    }
    // A run of holes is one item, as Node shows it.
    let holes = 1;
    while (i + holes < shown && !(i + holes in arr)) holes++;
    ArrayPrototypePush(items, "<" + holes + " empty item" + (holes > 1 ? "s>" : ">"));
    i += holes - 1;
  }
  more(items, len - shown);
  return braces("", "[", "]", items);
}

// Uint8Array(3) [ 1, 2, 3 ]
function inspectTyped(view, depth, seen) {
  const name = constructorName(view) || "TypedArray";
  const len = view.length;
  const items = [];
  const shown = len < INSPECT_ITEMS ? len : INSPECT_ITEMS;
  for (let i = 0; i < shown; i++) ArrayPrototypePush(items, inspect(view[i], depth + 1, seen));
  more(items, len - shown);
  return braces(name + "(" + len + ") ", "[", "]", items);
}

function inspectMap(map, depth, seen) {
  const items = [];
  const size = MapPrototypeGetSize(map);
  MapPrototypeForEach(map, (v, k) => {
    if (items.length < INSPECT_ITEMS) {
      ArrayPrototypePush(items, inspect(k, depth + 1, seen) + " => " + inspect(v, depth + 1, seen));
    }
  });
  more(items, size - items.length);
  return braces("Map(" + size + ") ", "{", "}", items);
}

function inspectSet(set, depth, seen) {
  const items = [];
  const size = SetPrototypeGetSize(set);
  SetPrototypeForEach(set, (v) => {
    if (items.length < INSPECT_ITEMS) ArrayPrototypePush(items, inspect(v, depth + 1, seen));
  });
  more(items, size - items.length);
  return braces("Set(" + size + ") ", "{", "}", items);
}

function inspectPlain(obj, depth, seen) {
  const keys = ObjectKeys(obj);
  const items = [];
  const shown = keys.length < INSPECT_ITEMS ? keys.length : INSPECT_ITEMS;
  for (let i = 0; i < shown; i++) {
    const key = keys[i];
    const name = isIdentifier(key) ? key : quote(key);
    const desc = ObjectGetOwnPropertyDescriptor(obj, key);
    let text;
    if (desc === undefined) continue;
    if (ObjectPrototypeHasOwnProperty(desc, "value")) text = inspect(desc.value, depth + 1, seen);
    else text = desc.set ? (desc.get ? "[Getter/Setter]" : "[Setter]") : "[Getter]";
    ArrayPrototypePush(items, name + ": " + text);
  }
  more(items, keys.length - shown);
  const ctor = constructorName(obj);
  const prefix = ctor === null ? "[Object: null prototype] " : ctor && ctor !== "Object" ? ctor + " " : "";
  return braces(prefix, "{", "}", items);
}

const guestConsole = { __proto__: null };
for (const name of ObjectKeys(LEVELS)) {
  const level = LEVELS[name];
  guestConsole[name] = function (...args) {
    emit(level, format(args));
  };
}

// console.group's indentation, counters and timers: the isolate's, as a
// Node process's console has them (a container's requests share them).
let groupIndent = "";
const counts = new SafeMap();
const timings = new SafeMap();

function emit(level, text) {
  op_wt_console(currentRequest(), level, groupIndent === "" ? text : indent(text, groupIndent));
}

// Walks the text: a string's split or replace would look up
// String.prototype's Symbol methods, which guest code may have replaced.
function indent(text, by) {
  let out = by;
  let last = 0;
  for (let i = StringPrototypeIndexOf(text, "\n"); i !== -1; i = StringPrototypeIndexOf(text, "\n", last)) {
    out += StringPrototypeSlice(text, last, i + 1) + by;
    last = i + 1;
  }
  return out + StringPrototypeSlice(text, last);
}

// The rest of Node 20's console, printed as Node prints it; what Node
// writes to stderr is at warn level, the rest at info.
ObjectAssign(guestConsole, {
  dir(value, options) {
    // `depth`: levels shown below the top (Node's default 2; null for all).
    let depth = INSPECT_DEPTH;
    try {
      const d = options?.depth;
      if (d === null || d === Infinity) depth = Infinity;
      else if (typeof d === "number" && d >= 0) depth = d;
    } catch {
      // A throwing getter on the guest's options: the default.
    }
    emit(LEVELS.log, typeof value === "string" ? quote(value) : inspect(value, INSPECT_DEPTH - depth, []));
  },
  dirxml(...args) {
    emit(LEVELS.log, format(args));
  },
  assert(value, ...args) {
    if (value) return;
    args[0] = args.length === 0 ? "Assertion failed" : "Assertion failed: " + safeString(args[0]);
    emit(LEVELS.warn, format(args));
  },
  count(label = "default") {
    label = safeString(label);
    const n = (counts.get(label) ?? 0) + 1;
    counts.set(label, n);
    emit(LEVELS.info, label + ": " + n);
  },
  countReset(label = "default") {
    label = safeString(label);
    if (!counts.has(label)) return emit(LEVELS.warn, `Warning: Count for '${label}' does not exist`);
    counts.set(label, 0);
  },
  group(...label) {
    if (label.length > 0) emit(LEVELS.log, format(label));
    groupIndent += "  ";
  },
  groupCollapsed(...label) {
    guestConsole.group(...label);
  },
  groupEnd() {
    groupIndent = StringPrototypeSlice(groupIndent, 2);
  },
  time(label = "default") {
    label = safeString(label);
    if (timings.has(label)) return emit(LEVELS.warn, `Warning: Label '${label}' already exists for console.time()`);
    timings.set(label, DateNow());
  },
  timeLog(label = "default", ...data) {
    timeLog(safeString(label), "timeLog", data);
  },
  timeEnd(label = "default") {
    label = safeString(label);
    if (timeLog(label, "timeEnd", [])) timings.delete(label);
  },
  table(data, properties) {
    if (data === null || typeof data !== "object") return guestConsole.log(data);
    emit(LEVELS.log, table(data, properties));
  },
  clear() {},
});

function timeLog(label, method, data) {
  const start = timings.get(label);
  if (start === undefined) {
    emit(LEVELS.warn, `Warning: No such label '${label}' for console.${method}()`);
    return false;
  }
  emit(LEVELS.log, format(["%s: %s", label, formatTime(DateNow() - start), ...data]));
  return true;
}

// As Node 20's console.timeEnd: "12.5ms", "1.234s", "1:02.345 (m:ss.mmm)".
// The clock is the runtime's, at millisecond resolution.
function formatTime(ms) {
  if (ms < 1000) return NumberCtor(NumberPrototypeToFixed(ms, 3)) + "ms";
  if (ms < 60000) return NumberPrototypeToFixed(ms / 1000, 3) + "s";
  const hours = MathFloor(ms / 3600000);
  const minutes = MathFloor((ms % 3600000) / 60000);
  const seconds = NumberPrototypeToFixed((ms % 60000) / 1000, 3);
  const pad = (n) => (StringCtor(n).length < 2 ? "0" + n : StringCtor(n));
  const secs = seconds.length < 6 ? "0" + seconds : seconds;
  return hours !== 0 ? `${hours}:${pad(minutes)}:${secs} (h:mm:ss.mmm)` : `${minutes}:${secs} (m:ss.mmm)`;
}

// console.table, drawn as Node 20 draws it: an (index) column, one column
// per key of the rows (or per `properties`), Values for rows that are not
// objects, every cell inspected one level deep and aligned left.
function table(data, properties) {
  const cell = (v) => {
    const wide = v !== null && typeof v === "object" && !ArrayIsArray(v) && ObjectKeys(v).length > 2;
    return wide ? "[" + (constructorName(v) || "Object") + "]" : inspect(v, INSPECT_DEPTH, []);
  };
  const t = tag(data);
  let index;
  let rows;
  if (t === "[object Map]" || t === "[object Set]") {
    index = [];
    const keys = [];
    const values = [];
    let i = 0;
    const add = (v, k) => {
      ArrayPrototypePush(index, StringCtor(i++));
      ArrayPrototypePush(values, cell(v));
      if (t === "[object Map]") ArrayPrototypePush(keys, cell(k));
    };
    if (t === "[object Map]") MapPrototypeForEach(data, add);
    else SetPrototypeForEach(data, add);
    const head = t === "[object Map]" ? ["(iteration index)", "Key", "Values"] : ["(iteration index)", "Values"];
    return drawTable(head, t === "[object Map]" ? [index, keys, values] : [index, values]);
  }
  index = ObjectKeys(data);
  rows = { __proto__: null };
  const columns = [];
  const plain = [];
  let hasPlain = false;
  for (let i = 0; i < index.length; i++) {
    const item = data[index[i]];
    const primitive = item === null || (typeof item !== "function" && typeof item !== "object");
    if (properties === undefined && primitive) {
      hasPlain = true;
      plain[i] = cell(item);
      continue;
    }
    const keys = properties || ObjectKeys(item);
    for (let j = 0; j < keys.length; j++) {
      const key = keys[j];
      if (rows[key] === undefined) {
        rows[key] = [];
        ArrayPrototypePush(columns, key);
      }
      rows[key][i] = primitive || !ObjectPrototypeHasOwnProperty(item, key) ? "" : cell(item[key]);
    }
  }
  const head = ["(index)"];
  const body = [index];
  for (let j = 0; j < columns.length; j++) {
    ArrayPrototypePush(head, StringCtor(columns[j]));
    ArrayPrototypePush(body, rows[columns[j]]);
  }
  if (hasPlain) {
    ArrayPrototypePush(head, "Values");
    ArrayPrototypePush(body, plain);
  }
  return drawTable(head, body);
}

function drawTable(head, columns) {
  let height = 0;
  for (let i = 0; i < columns.length; i++) height = MathMax(height, columns[i].length);
  const widths = [];
  const lines = [];
  for (let i = 0; i < head.length; i++) {
    let width = head[i].length;
    for (let j = 0; j < height; j++) {
      if (lines[j] === undefined) lines[j] = [];
      const v = columns[i][j] ?? "";
      lines[j][i] = v;
      width = MathMax(width, v.length);
    }
    widths[i] = width;
  }
  const rule = (left, middle, right) => {
    let out = left;
    for (let i = 0; i < widths.length; i++) out += (i === 0 ? "" : middle) + StringPrototypeRepeat("\u2500", widths[i] + 2);
    return out + right;
  };
  const row = (cells) => {
    let out = "\u2502";
    for (let i = 0; i < widths.length; i++) {
      out += " " + cells[i] + StringPrototypeRepeat(" ", widths[i] - cells[i].length) + " \u2502";
    }
    return out;
  };
  let out = rule("\u250c", "\u252c", "\u2510") + "\n" + row(head) + "\n" + rule("\u251c", "\u253c", "\u2524") + "\n";
  for (let j = 0; j < lines.length; j++) out += row(lines[j]) + "\n";
  return out + rule("\u2514", "\u2534", "\u2518");
}

// Guests get numeric ids; the core timer objects stay in this table.
const timers = new SafeMap();

function createGuestTimer(callback, delay, args, repeat) {
  if (typeof callback !== "function") {
    throw new TypeErrorCtor("The \"callback\" argument must be of type function");
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

const isAsyncFunction = (function isAsyncFunction(fn) {
  return ObjectGetPrototypeOf(fn) === AsyncFunctionProto;
});

const isThenable = (function isThenable(v) {
  try {
    return v !== null && (typeof v === "object" || typeof v === "function") &&
      typeof v.then === "function";
  } catch {
    return false;
  }
});

// `function (context, req, res)`: a minimal Node-style response writer that
// streams to the host. Headers go out with the first write or with end().
// It is an EventEmitter ('finish' and 'close' after end()) and is Node's
// `http.ServerResponse`, so Express and its middleware can build on it. The
// emitter half comes from the `events` polyfill, which is not in the
// snapshot: the prototype chain is completed on first use.
let emitterReady = false;
function emitterPrototype() {
  if (emitterReady) return true;
  try {
    ObjectSetPrototypeOf(ServerResponse.prototype, builtin("events").prototype);
    emitterReady = true;
  } catch {
    // The guest broke the built-ins the polyfill is made of: a response
    // that writes but does not emit.
  }
  return emitterReady;
}

class ServerResponse {
  #id;
  #headers = new SafeMap();
  #headerBytes = 0;
  #sent = false;
  #ended = false;
  statusCode = 200;
  statusMessage = undefined;
  sendDate = true;
  socket = null;
  connection = null;
  constructor(id) {
    this.#id = id;
    if (emitterPrototype()) {
      try {
        ReflectApply(builtin("events").init, this, []);
      } catch {
        // as above
      }
    }
  }
  get headersSent() {
    return this.#sent;
  }
  get writableEnded() {
    return this.#ended;
  }
  get finished() {
    return this.#ended;
  }
  get writableFinished() {
    return this.#ended;
  }
  get writable() {
    return !this.#ended;
  }
  getHeaders() {
    const out = { __proto__: null };
    for (const { 0: k } of new primordials.SafeMapIterator(this.#headers)) out[k] = this.getHeader(k);
    return out;
  }
  getHeaderNames() {
    const out = [];
    for (const { 0: k } of new primordials.SafeMapIterator(this.#headers)) ArrayPrototypePush(out, k);
    return out;
  }
  hasHeader(name) {
    return this.#headers.has(StringPrototypeToLowerCase(StringCtor(name)));
  }
  flushHeaders() {
    if (this.#ended) return;
    this.#flushHead();
    // The host holds a head until the first body bytes; none releases it.
    op_wt_write(this.#id, "");
  }
  setTimeout() {
    return this;
  }
  cork() {}
  uncork() {}
  addTrailers() {}
  setHeader(name, value) {
    if (this.#sent) throw codedError(ErrorCtor, "ERR_HTTP_HEADERS_SENT", "Cannot set headers after they are sent to the client");
    if (typeof name !== "string" || !isHttpToken(name)) {
      throw codedError(TypeErrorCtor, "ERR_INVALID_HTTP_TOKEN", `Header name must be a valid HTTP token ["${name}"]`);
    }
    if (value === undefined) {
      throw codedError(TypeErrorCtor, "ERR_HTTP_INVALID_HEADER_VALUE", `Invalid value "undefined" for header "${name}"`);
    }
    const key = StringPrototypeToLowerCase(name);
    const values = [];
    if (ArrayIsArray(value)) {
      for (let i = 0; i < value.length; i++) ArrayPrototypePush(values, StringCtor(value[i]));
    } else {
      ArrayPrototypePush(values, StringCtor(value));
    }
    for (let i = 0; i < values.length; i++) {
      if (!isHeaderValue(values[i])) {
        throw codedError(TypeErrorCtor, "ERR_INVALID_CHAR", `Invalid character in header content ["${name}"]`);
      }
    }
    // Counted here, before anything is copied to the host: headers are
    // part of the response and share its limit.
    let bytes = key.length;
    for (let i = 0; i < values.length; i++) bytes += values[i].length;
    this.#headerBytes += bytes;
    if (this.#headerBytes > responseLimit) {
      throw new ErrorCtor(`Response headers exceed the response limit of ${responseLimit} bytes`);
    }
    this.#headers.set(key, values);
    return this;
  }
  getHeader(name) {
    const v = this.#headers.get(StringPrototypeToLowerCase(StringCtor(name)));
    return v === undefined ? undefined : v.length === 1 ? v[0] : [...new primordials.SafeArrayIterator(v)];
  }
  removeHeader(name) {
    this.#headers.delete(StringPrototypeToLowerCase(StringCtor(name)));
  }
  writeHead(status, reason, headers) {
    if (typeof reason === "object" && reason !== null) headers = reason;
    this.statusCode = status;
    if (headers) {
      const keys = ObjectKeys(headers);
      for (let i = 0; i < keys.length; i++) this.setHeader(keys[i], headers[keys[i]]);
    }
    this.#flushHead();
    return this;
  }
  #flushHead() {
    if (this.#sent) return;
    this.#sent = true;
    const flat = [];
    for (const { 0: k, 1: v } of new primordials.SafeMapIterator(this.#headers)) {
      for (let i = 0; i < v.length; i++) ArrayPrototypePush(flat, k, v[i]);
    }
    const status = this.statusCode;
    op_wt_head(this.#id, typeof status === "number" ? status : NaN, flat);
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
    queueMicrotask(() => {
      try {
        this.emit("finish");
        this.emit("close");
      } catch {
        // A listener's failure after the response ended changes nothing.
      }
    });
    return this;
  }
}

// Node's checks on a header set by the guest (its errors, with their
// codes): one the HTTP layer could not send fails where it is set, never
// vanishes on the way out.
const TOKEN_PUNCTUATION = "!#$%&'*+-.^_`|~";

function isHttpToken(s) {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = StringPrototypeCharCodeAt(s, i);
    const alnum = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
    if (!alnum && StringPrototypeIndexOf(TOKEN_PUNCTUATION, s[i]) === -1) return false;
  }
  return true;
}

function isHeaderValue(s) {
  for (let i = 0; i < s.length; i++) {
    const c = StringPrototypeCharCodeAt(s, i);
    if (c !== 0x09 && (c < 0x20 || c === 0x7f || c > 0xff)) return false;
  }
  return true;
}

function toChunk(chunk) {
  if (typeof chunk === "string") return chunk;
  if (ArrayBufferIsView(chunk)) return chunk;
  if (chunk instanceof ArrayBufferCtor) return new Uint8ArrayCtor(chunk);
  return StringCtor(chunk);
}

// A request object built on primordials only: method, url, headers and the
// raw body as one 'data' event followed by 'end'.
function minimalIncoming(method, url, headers, rawBody) {
  const listeners = { __proto__: null, data: [], end: [] };
  let scheduled = false;
  function scheduleBody() {
    if (scheduled) return;
    scheduled = true;
    queueMicrotask(() => {
      if (rawBody !== undefined && rawBody !== "") {
        for (let i = 0; i < listeners.data.length; i++) listeners.data[i](rawBody);
      }
      for (let i = 0; i < listeners.end.length; i++) listeners.end[i]();
    });
  }
  const req = {
    method,
    url,
    headers,
    on(event, fn) {
      if (event === "data" || event === "end") {
        ArrayPrototypePush(listeners[event], fn);
        scheduleBody();
      }
      return req;
    },
  };
  req.addListener = req.on;
  req.once = req.on;
  return req;
}

const isPlainObject = (function isPlainObject(v) {
  return v !== null && typeof v === "object" && !ArrayIsArray(v);
});

// Copies own enumerable properties as data properties: unlike
// Object.assign, a key named "__proto__" stays a key and never replaces
// the target's prototype.
const merge = (function merge(target, source) {
  if (!isPlainObject(source)) return;
  if (!ObjectPrototypeHasOwnProperty(source, "__proto__")) {
    ObjectAssign(target, source);
    return;
  }
  const keys = ObjectKeys(source);
  for (let i = 0; i < keys.length; i++) {
    ObjectDefineProperty(target, keys[i], {
      __proto__: null,
      value: source[keys[i]],
      writable: true,
      enumerable: true,
      configurable: true,
    });
  }
});

// Calls `fn` for request `id`. Completion always goes through the ops
// (op_wt_complete / op_wt_fail / op_wt_end); the first outcome wins.
const run = (function run(fn, id, method, url, headers, query, body, rawBody, data, secrets, meta) {
  setAsyncContext(id);
  try {
    const merged = {};
    merge(merged, query);
    merge(merged, body);
    merge(merged, data);
    const context = { data: merged, query, body, headers, secrets, meta };
    if (fn.length >= 3) {
      // `/api/run/{container}?q` reads as `/api/run/{container}/?q`: the
      // Auth0 URL shape webtask-tools strips before routing.
      const m = /^\/api\/run\/([^/?]+)/.exec(typeof url === "string" ? url : "");
      if (m && (url.length === m[0].length || url[m[0].length] === "?")) {
        url = m[0] + "/" + StringPrototypeSlice(url, m[0].length);
      }
      let req;
      try {
        req = incomingMessage(method, url, headers, rawBody);
      } catch {
        // The guest broke the built-ins its own streams are made of (a
        // poisoned Function.prototype.call, say): it still gets a request.
        req = minimalIncoming(method, url, headers, rawBody);
      }
      // What webtask-tools' fromExpress() reads to strip /api/run/{container}.
      req.x_wt = { container: m ? m[1] : "", url_format: 1 };
      const r = ReflectApply(fn, undefined, [context, req, new ServerResponse(id)]);
      if (isThenable(r)) {
        PromisePrototypeThen(PromiseResolve(r), undefined, (e) => fail(id, e));
      }
      return;
    }
    let done = false;
    const cb = (function cb(err, value) {
      if (done) return;
      done = true;
      if (err !== null && err !== undefined) fail(id, err);
      else succeed(id, value);
    });
    const isAsync = isAsyncFunction(fn);
    // `function (cb)` is the one-argument Webtask model; async functions
    // and two-argument functions get the context first.
    const usesCb = isAsync ? fn.length >= 2 : fn.length !== 0;
    const args = (!isAsync && fn.length === 1) ? [cb] : [context, cb];
    const r = ReflectApply(fn, undefined, args);
    if (isThenable(r)) {
      PromisePrototypeThen(
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
});

// Turns the compiled webtask body into the webtask function: either what the
// body returns (`return function (...) {}`) or what it puts in module.exports.
// A failure is returned as describe()'s array, for the host to report.
const instantiate = (function instantiate(factory) {
  try {
    const { module, require } = webtaskModule();
    const returned = ReflectApply(factory, globalThis, [module, module.exports, require]);
    const fn = typeof returned === "function" ? returned : module.exports;
    if (typeof fn !== "function") {
      throw new TypeErrorCtor(
        "The code must return a function or assign one to module.exports",
      );
    }
    return fn;
  } catch (e) {
    return describe(e);
  }
});


// `timers`: the guest's own timer functions.
registerBuiltin("timers", () => {
  const g = globalThis;
  const promises = {
    setTimeout: (ms, value) => new primordials.Promise((resolve) => g.setTimeout(resolve, ms, value)),
    setImmediate: (value) => new primordials.Promise((resolve) => g.setTimeout(resolve, 0, value)),
  };
  return {
    setTimeout: g.setTimeout,
    clearTimeout: g.clearTimeout,
    setInterval: g.setInterval,
    clearInterval: g.clearInterval,
    setImmediate: g.setImmediate,
    clearImmediate: g.clearImmediate,
    promises,
  };
});
registerBuiltin("timers/promises", () => builtin("timers").promises);

// `stream/web`: the WHATWG streams the globals are.
registerBuiltin("stream/web", () => {
  const more = web.webStreams();
  return {
    ReadableStream: web.ReadableStream,
    ReadableStreamDefaultReader: web.ReadableStreamDefaultReader,
    ReadableStreamDefaultController: web.ReadableStreamDefaultController,
    WritableStream: more.WritableStream,
    WritableStreamDefaultWriter: more.WritableStreamDefaultWriter,
    WritableStreamDefaultController: more.WritableStreamDefaultController,
    TransformStream: more.TransformStream,
    TransformStreamDefaultController: more.TransformStreamDefaultController,
    TextEncoderStream: more.TextEncoderStream,
    TextDecoderStream: more.TextDecoderStream,
    CountQueuingStrategy: more.CountQueuingStrategy,
    ByteLengthQueuingStrategy: more.ByteLengthQueuingStrategy,
    CompressionStream: web.CompressionStream,
    DecompressionStream: web.DecompressionStream,
  };
});

provideServerResponse(ServerResponse, emitterPrototype);

// A resizable buffer (`maxByteLength`) is reserved and grown by V8 itself,
// outside the allocator that holds a container to its ArrayBuffer limit:
// refused, clearly, rather than left as a way around the limit. Everything
// else about the constructor (instanceof, subclasses, statics) is the
// original's, through the proxy, which also replaces it as its prototype's
// `constructor` (else `new Uint8Array(1).buffer.constructor` is the
// original). The original gets the length alone, already a primitive: it
// then runs no guest code, so options read once here cannot read
// differently there (a getter), and no guest frame ever sits above it.
const fixedLengthOnly = (function fixedLengthOnly(ctor, name) {
  const proxy = new ProxyCtor(ctor, {
    __proto__: null,
    construct(target, args, newTarget) {
      const options = args[1];
      if (options !== null && typeof options === "object" && options.maxByteLength !== undefined) {
        throw new RangeErrorCtor(
          `resizable ${name}s (maxByteLength) are not available in webtask: their memory would escape the container's ArrayBuffer limit`,
        );
      }
      let length = args[0];
      if ((length !== null && typeof length === "object") || typeof length === "function") length = NumberCtor(length);
      return ReflectConstruct(target, [length], newTarget);
    },
  });
  ObjectDefineProperty(ctor.prototype, "constructor", {
    __proto__: null,
    value: proxy,
    writable: true,
    enumerable: false,
    configurable: true,
  });
  return proxy;
});

// Called once per isolate by the host with its limits; returns the runner's
// entry points and leaves the guest with its own global only.
globalThis.__webtask_lockdown = (function lockdown(limitBytes) {
  responseLimit = limitBytes;
  const g = globalThis;
  delete g.__webtask_lockdown;
  delete g.Deno;
  delete g.__bootstrap;
  delete g.__infra;
  // Streaming compilation needs an embedder hook this runtime does not
  // install; calling it would abort the process.
  delete g.WebAssembly.compileStreaming;
  delete g.WebAssembly.instantiateStreaming;
  g.console = ObjectFreeze(guestConsole);
  g.setTimeout = (cb, delay, ...args) => createGuestTimer(cb, delay, args, false);
  g.setInterval = (cb, delay, ...args) => createGuestTimer(cb, delay, args, true);
  g.clearTimeout = clearGuestTimer;
  g.clearInterval = clearGuestTimer;
  g.global = g;
  g.setImmediate = (cb, ...args) => createGuestTimer(cb, 0, args, false);
  provideSetImmediate((cb) => createGuestTimer(cb, 0, [], false));
  g.clearImmediate = clearGuestTimer;
  g.process = guestProcess;
  g.performance = performance;
  const perfClasses = { Performance, PerformanceEntry, PerformanceMark, PerformanceMeasure };
  for (const name in perfClasses) web.defineGlobal(g, name, perfClasses[name]);
  // The observer classes are made on first read.
  for (const name of ["PerformanceObserver", "PerformanceObserverEntryList"]) {
    web.defineLazyGlobal(g, name, () => observerClasses()[name]);
  }
  g.ArrayBuffer = fixedLengthOnly(g.ArrayBuffer, "ArrayBuffer");
  if (g.SharedArrayBuffer !== undefined) g.SharedArrayBuffer = fixedLengthOnly(g.SharedArrayBuffer, "SharedArrayBuffer");
  // `Buffer` loads the polyfills on first use.
  web.defineLazyGlobal(g, "Buffer", () => builtin("buffer").Buffer);
  web.install(g);
  return { run, instantiate };
});
