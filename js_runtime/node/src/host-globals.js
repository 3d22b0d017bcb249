// What readable-stream requires as packages (`process/`, `abort-controller`)
// is the isolate's own: its `process` (nextTick as the runtime runs it) and
// its AbortController, not npm stand-ins with timers of their own.
"use strict";

module.exports = {
  process: () => globalThis.process,
  abortController: () => ({ AbortController: globalThis.AbortController, AbortSignal: globalThis.AbortSignal }),
};
