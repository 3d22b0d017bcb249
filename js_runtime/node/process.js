// The sanitised `process` (global and built-in) and `os`: what Node code
// reads to find its footing, with nothing of the host in it. `env` is empty,
// `exit` and `kill` throw instead of ending anything, the clock is the
// guest's Date (millisecond resolution, monotonic: a coarse clock is also a
// poor timer for side channels), and `os` reports harmless constants.

import { registerBuiltin, unavailableError } from "ext:webtask_runtime/node/require.js";

const {
  ArrayIsArray,
  BigInt: BigIntCtor,
  DateNow,
  MathFloor,
  ObjectFreeze,
  ReflectApply,
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
