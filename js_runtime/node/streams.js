// WritableStream and TransformStream, with ReadableStream's pipeTo and
// pipeThrough, TextEncoderStream/TextDecoderStream and the queuing
// strategies: the standard's algorithms, kept to what guest code can
// observe (a queue with back-pressure: `ready`, `desiredSize`; one sink
// call at a time; errors and aborts reaching every pending promise).
//
// Not an extension module: a classic script that evaluates to a function,
// compiled on an isolate's first use of any of these (op_wt_load_streams)
// and given web.js's helpers, so that isolates of code that never uses them
// do not deserialise them from the snapshot.

(function streams(deps) {
  "use strict";
  const {
    primordials,
    deferred,
    handled,
    settledCall,
    abortError,
    AbortController,
    AbortSignal,
    ReadableStream,
    streamState,
    bytesOf,
    TextDecoder,
    encode,
  } = deps;
  const {
    ArrayPrototypePush,
    ArrayPrototypeShift,
    Number: NumberCtor,
    PromisePrototypeThen,
    PromiseReject,
    PromiseResolve,
    RangeError,
    ReflectApply,
    String: StringCtor,
    StringPrototypeCharCodeAt,
    StringPrototypeSlice,
    Symbol: SymbolCtor,
    SymbolToStringTag,
    TypeError: TypeErrorCtor,
  } = primordials;
  const INTERNAL = SymbolCtor("internal");

  let writableState;

  function invalidState(message) {
    const err = new TypeErrorCtor(message);
    err.code = "ERR_INVALID_STATE";
    return err;
  }

  function queueSize(size, chunk) {
    if (size === null) return 1;
    const n = NumberCtor(ReflectApply(size, undefined, [chunk]));
    if (!(n >= 0) || n === Infinity) throw new RangeError("The return value of the queuing strategy's size function is invalid");
    return n;
  }

  function strategyOf(strategy, fallback) {
    const hwmIn = strategy?.highWaterMark;
    const hwm = hwmIn === undefined ? fallback : NumberCtor(hwmIn);
    if (!(hwm >= 0)) throw new RangeError(`The argument 'highWaterMark' is invalid. Received ${StringCtor(hwmIn)}`);
    const size = strategy?.size;
    return { hwm, size: typeof size === "function" ? size : null };
  }

  /// A writer's `ready` or `closed`: a deferred that knows whether it has
  /// settled, so a pending one is settled (the promise a caller already
  /// holds) and only a settled one is replaced.
  function slot() {
    const d = deferred();
    handled(d.promise);
    const out = { promise: d.promise, settled: false };
    out.resolve = (v) => {
      out.settled = true;
      d.resolve(v);
    };
    out.reject = (e) => {
      out.settled = true;
      d.reject(e);
    };
    return out;
  }

  /// Rejects `rec[name]` with `e`: the pending promise itself, or a fresh
  /// one if it had settled.
  function rejectSlot(rec, name, e) {
    if (rec[name].settled) rec[name] = slot();
    rec[name].reject(e);
  }

  /// The writer record of a locked stream: its `ready` and `closed`.
  function newWriterRecord(w) {
    const rec = { ready: slot(), closed: slot() };
    if (w.state === "errored") {
      rec.ready.reject(w.error);
      rec.closed.reject(w.error);
    } else if (w.state === "closed") {
      rec.ready.resolve(undefined);
      rec.closed.resolve(undefined);
    } else if (!w.backpressure || w.closeRequested) {
      rec.ready.resolve(undefined);
    }
    return rec;
  }

  function updateBackpressure(w) {
    const backpressure = w.hwm - w.queueTotal <= 0;
    if (backpressure === w.backpressure) return;
    w.backpressure = backpressure;
    const rec = w.writer;
    if (rec === null || w.state !== "writable") return;
    if (backpressure) {
      if (rec.ready.settled) rec.ready = slot();
    } else {
      rec.ready.resolve(undefined);
    }
  }

  function errorWritable(w, e) {
    if (w.state !== "writable") return;
    w.state = "errored";
    w.error = e;
    // A sink call in flight settles its own promise when it returns.
    const queue = w.queue;
    const from = w.inFlight !== null && queue.length > 0 && w.inFlightIsWrite ? 1 : 0;
    w.queue = [];
    w.queueTotal = 0;
    for (let i = from; i < queue.length; i++) queue[i].done.reject(e);
    if (w.closeDone !== null && !(w.inFlight !== null && !w.inFlightIsWrite)) w.closeDone.reject(e);
    const rec = w.writer;
    if (rec !== null) {
      rejectSlot(rec, "ready", e);
      rejectSlot(rec, "closed", e);
    }
    w.aborter.abort(e);
  }

  function finishWritableClose(w) {
    w.state = "closed";
    w.closeDone.resolve(undefined);
    if (w.writer !== null) w.writer.closed.resolve(undefined);
  }

  // Hands the sink its next write, or the close, once the last call settled.
  function advanceWritable(w) {
    if (!w.started || w.inFlight !== null || w.state !== "writable") return;
    if (w.queue.length === 0) {
      if (!w.closeRequested) return;
      const closeDone = w.closeDone;
      w.inFlightIsWrite = false;
      w.inFlight = PromisePrototypeThen(settledCall(w.close, w.sink, []), () => {
        w.inFlight = null;
        if (w.state === "writable") finishWritableClose(w);
        else closeDone.resolve(undefined);
      }, (e) => {
        w.inFlight = null;
        closeDone.reject(e);
        errorWritable(w, e);
      });
      return;
    }
    const entry = w.queue[0];
    w.inFlightIsWrite = true;
    w.inFlight = PromisePrototypeThen(settledCall(w.write, w.sink, [entry.chunk, w.controller]), () => {
      w.inFlight = null;
      entry.done.resolve(undefined);
      if (w.state !== "writable") return;
      ArrayPrototypeShift(w.queue);
      w.queueTotal -= entry.size;
      updateBackpressure(w);
      advanceWritable(w);
    }, (e) => {
      w.inFlight = null;
      entry.done.reject(e);
      errorWritable(w, e);
    });
  }

  function writeChunk(w, chunk) {
    if (w.state === "errored") return PromiseReject(w.error);
    if (w.state === "closed" || w.closeRequested) return PromiseReject(invalidState("Invalid state: WritableStream is closed"));
    let size;
    try {
      size = queueSize(w.size, chunk);
    } catch (e) {
      errorWritable(w, e);
      return PromiseReject(e);
    }
    const done = deferred();
    ArrayPrototypePush(w.queue, { chunk, size, done });
    w.queueTotal += size;
    updateBackpressure(w);
    advanceWritable(w);
    return done.promise;
  }

  function closeWritable(w) {
    if (w.state === "errored") return PromiseReject(w.error);
    if (w.state === "closed" || w.closeRequested) return PromiseReject(invalidState("Invalid state: WritableStream is closed"));
    w.closeRequested = true;
    w.closeDone = deferred();
    handled(w.closeDone.promise);
    if (w.writer !== null && w.backpressure) w.writer.ready.resolve(undefined);
    advanceWritable(w);
    return w.closeDone.promise;
  }

  function abortWritable(w, reason) {
    if (w.state !== "writable") return PromiseResolve(undefined);
    const err = reason === undefined ? abortError() : reason;
    errorWritable(w, err);
    // The sink hears of the abort once the call it is in has returned.
    const after = w.inFlight === null ? PromiseResolve(undefined) : PromisePrototypeThen(w.inFlight, () => undefined, () => undefined);
    if (w.abort === null) return after;
    return PromisePrototypeThen(after, () => PromisePrototypeThen(settledCall(w.abort, w.sink, [reason]), () => undefined));
  }

  class WritableStreamDefaultController {
    #w;
    constructor(token, w) {
      if (token !== INTERNAL) throw new TypeErrorCtor("Illegal constructor");
      this.#w = w;
    }
    /// Aborted when the stream errors or is aborted, with the reason.
    get signal() {
      return this.#w.aborter.signal;
    }
    error(e) {
      errorWritable(this.#w, e);
    }
  }

  class WritableStreamDefaultWriter {
    #w;
    #rec;
    constructor(stream) {
      const w = writableState(stream);
      if (w === undefined) throw new TypeErrorCtor("The argument must be a WritableStream");
      if (w.writer !== null) throw invalidState("WritableStream is locked");
      this.#w = w;
      this.#rec = w.writer = newWriterRecord(w);
    }
    get closed() {
      return this.#rec.closed.promise;
    }
    get ready() {
      return this.#rec.ready.promise;
    }
    get desiredSize() {
      const w = this.#w;
      if (w === null) throw new TypeErrorCtor("The writer was released");
      if (w.state === "errored") return null;
      if (w.state === "closed") return 0;
      return w.hwm - w.queueTotal;
    }
    write(chunk = undefined) {
      if (this.#w === null) return PromiseReject(new TypeErrorCtor("The writer was released"));
      return writeChunk(this.#w, chunk);
    }
    close() {
      if (this.#w === null) return PromiseReject(new TypeErrorCtor("The writer was released"));
      return closeWritable(this.#w);
    }
    abort(reason = undefined) {
      if (this.#w === null) return PromiseReject(new TypeErrorCtor("The writer was released"));
      return abortWritable(this.#w, reason);
    }
    releaseLock() {
      const w = this.#w;
      if (w === null) return;
      const released = new TypeErrorCtor("The writer was released");
      const rec = this.#rec;
      rejectSlot(rec, "ready", released);
      rejectSlot(rec, "closed", released);
      w.writer = null;
      this.#w = null;
    }
    get [SymbolToStringTag]() {
      return "WritableStreamDefaultWriter";
    }
  }

  class WritableStream {
    #w;
    static {
      writableState = (stream) => (stream !== null && typeof stream === "object" && #w in stream ? stream.#w : undefined);
    }
    constructor(sink = undefined, strategy = undefined) {
      const snk = sink === undefined || sink === null ? {} : sink;
      if (snk.type !== undefined) throw new RangeError("Invalid type is specified");
      const { hwm, size } = strategyOf(strategy, 1);
      const fn = (name) => (typeof snk[name] === "function" ? snk[name] : null);
      const write = fn("write");
      const close = fn("close");
      const w = {
        state: "writable",
        error: undefined,
        writer: null,
        queue: [],
        queueTotal: 0,
        hwm,
        size,
        sink: snk,
        write: write ?? (() => undefined),
        close: close ?? (() => undefined),
        abort: fn("abort"),
        started: false,
        inFlight: null,
        inFlightIsWrite: false,
        closeRequested: false,
        closeDone: null,
        backpressure: false,
        aborter: new AbortController(),
        controller: null,
      };
      this.#w = w;
      w.controller = new WritableStreamDefaultController(INTERNAL, w);
      updateBackpressure(w);
      const start = snk.start;
      const started = typeof start === "function" ? ReflectApply(start, snk, [w.controller]) : undefined;
      PromisePrototypeThen(PromiseResolve(started), () => {
        w.started = true;
        advanceWritable(w);
      }, (e) => errorWritable(w, e));
    }
    get locked() {
      return this.#w.writer !== null;
    }
    abort(reason = undefined) {
      if (this.#w.writer !== null) return PromiseReject(new TypeErrorCtor("Cannot abort a locked WritableStream"));
      return abortWritable(this.#w, reason);
    }
    close() {
      if (this.#w.writer !== null) return PromiseReject(new TypeErrorCtor("Cannot close a locked WritableStream"));
      return closeWritable(this.#w);
    }
    getWriter() {
      return new WritableStreamDefaultWriter(this);
    }
    get [SymbolToStringTag]() {
      return "WritableStream";
    }
  }

  /// `source` into `dest` (ReadableStream.prototype.pipeTo): waits for the
  /// destination's `ready` before each read, so a slow sink slows the
  /// source. Whatever ends it first (the source closing or failing, the
  /// destination closing or failing, the signal) ends it at once, even
  /// while it waits on an idle source or a stuck sink.
  async function pipe(source, dest, options) {
    const preventClose = !!options?.preventClose;
    const preventAbort = !!options?.preventAbort;
    const preventCancel = !!options?.preventCancel;
    const signal = options?.signal;
    const reader = source.getReader();
    const writer = dest.getWriter();
    // Why the pipe stops, once something says so; `wake` is the one wait
    // in progress. One reaction each on the long-lived promises, none per
    // chunk (racing every read against them would pile reactions up).
    let stopped = null;
    let wake = null;
    const stop = (why) => {
      if (stopped !== null) return;
      stopped = why;
      wake?.resolve(STOP);
    };
    PromisePrototypeThen(writer.closed, () => stop({ destClosed: true }), (e) => stop({ destError: e }));
    PromisePrototypeThen(reader.closed, undefined, (e) => stop({ sourceError: e }));
    const onAbort = () => stop({ aborted: signal.reason });
    if (signal !== undefined) {
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    const wait = (promise) => {
      const d = deferred();
      wake = d;
      PromisePrototypeThen(promise, (v) => d.resolve(v), (e) => d.resolve(STOP));
      if (stopped !== null) d.resolve(STOP);
      return d.promise;
    };
    let pending = PromiseResolve(undefined);
    let sourceDone = false;
    try {
      while (stopped === null) {
        if ((await wait(writer.ready)) === STOP) break;
        const step = await wait(reader.read());
        if (step === STOP) break;
        if (step.done) {
          sourceDone = true;
          break;
        }
        pending = handled(writer.write(step.value));
      }
      if (sourceDone && stopped === null) {
        await pending;
        if (!preventClose) await writer.close();
        return;
      }
      // Let a failure that ended the wait be the stop's reason.
      await PromiseResolve(undefined);
      const why = stopped ?? { destError: new TypeErrorCtor("The pipe stopped") };
      if ("aborted" in why) {
        const reason = why.aborted;
        if (!preventAbort) await PromisePrototypeThen(writer.abort(reason), undefined, () => {});
        if (!preventCancel) await PromisePrototypeThen(reader.cancel(reason), undefined, () => {});
        throw reason;
      }
      if ("sourceError" in why) {
        if (!preventAbort) await PromisePrototypeThen(writer.abort(why.sourceError), undefined, () => {});
        throw why.sourceError;
      }
      const error = "destError" in why ? why.destError : new TypeErrorCtor("The destination WritableStream closed before the pipe finished");
      if (!preventCancel) await PromisePrototypeThen(reader.cancel(error), undefined, () => {});
      throw error;
    } finally {
      if (signal !== undefined) signal.removeEventListener("abort", onAbort);
      reader.releaseLock();
      writer.releaseLock();
    }
  }
  const STOP = SymbolCtor("stop");

  class TransformStreamDefaultController {
    #t;
    constructor(token, t) {
      if (token !== INTERNAL) throw new TypeErrorCtor("Illegal constructor");
      this.#t = t;
    }
    get desiredSize() {
      return this.#t.readable.desiredSize;
    }
    enqueue(chunk = undefined) {
      const t = this.#t;
      t.readable.enqueue(chunk);
      if (t.readable.desiredSize <= 0 && t.demand === null) t.demand = deferred();
    }
    error(e) {
      errorTransform(this.#t, e);
    }
    terminate() {
      const t = this.#t;
      try {
        t.readable.close();
      } catch {
        // Closed already.
      }
      errorWritable(t.writable, new TypeErrorCtor("The TransformStream was terminated"));
      // A write waiting for the reader's demand ends too.
      t.demand?.resolve(undefined);
    }
  }

  function errorTransform(t, e) {
    try {
      t.readable.error(e);
    } catch {
      // Errored already.
    }
    errorWritable(t.writable, e);
    t.demand?.resolve(undefined);
  }

  class TransformStream {
    #readable;
    #writable;
    constructor(transformer = undefined, writableStrategy = undefined, readableStrategy = undefined) {
      const tr = transformer === undefined || transformer === null ? {} : transformer;
      if (tr.readableType !== undefined) throw new RangeError("Invalid readableType is specified");
      if (tr.writableType !== undefined) throw new RangeError("Invalid writableType is specified");
      const t = { readable: null, writable: null, demand: null };
      const controller = new TransformStreamDefaultController(INTERNAL, t);
      const startDone = deferred();
      const transform = typeof tr.transform === "function" ? tr.transform : null;
      const flush = typeof tr.flush === "function" ? tr.flush : null;
      const cancel = typeof tr.cancel === "function" ? tr.cancel : null;
      this.#readable = new ReadableStream({
        start(c) {
          t.readable = c;
          return startDone.promise;
        },
        pull() {
          // The reader wants more: a write waiting for room goes on.
          const demand = t.demand;
          t.demand = null;
          demand?.resolve(undefined);
        },
        cancel(reason) {
          errorWritable(t.writable, reason);
          t.demand?.resolve(undefined);
          return cancel === null ? undefined : ReflectApply(cancel, tr, [reason]);
        },
      }, readableStrategy ?? { highWaterMark: 0 });
      this.#writable = new WritableStream({
        start(c) {
          return startDone.promise;
        },
        write(chunk) {
          const run = () => {
            if (transform === null) return controller.enqueue(chunk);
            return ReflectApply(transform, tr, [chunk, controller]);
          };
          const wait = t.demand;
          if (wait === null) return PromisePrototypeThen(settledCall(run, undefined, []), undefined, (e) => {
            errorTransform(t, e);
            throw e;
          });
          return PromisePrototypeThen(wait.promise, () => {
            if (t.writable.state !== "writable") throw t.writable.error;
            return PromisePrototypeThen(settledCall(run, undefined, []), undefined, (e) => {
              errorTransform(t, e);
              throw e;
            });
          });
        },
        close() {
          return PromisePrototypeThen(settledCall(flush ?? (() => undefined), tr, [controller]), () => {
            try {
              t.readable.close();
            } catch {
              // Terminated already.
            }
          }, (e) => {
            errorTransform(t, e);
            throw e;
          });
        },
        abort(reason) {
          try {
            t.readable.error(reason);
          } catch {
            // Errored already.
          }
          return cancel === null ? undefined : ReflectApply(cancel, tr, [reason]);
        },
      }, writableStrategy);
      t.writable = writableState(this.#writable);
      // Until the reader first pulls, writes wait (a readable high-water mark
      // of 0 wants nothing yet).
      if (t.readable.desiredSize <= 0) t.demand = deferred();
      const start = tr.start;
      let started;
      try {
        started = typeof start === "function" ? ReflectApply(start, tr, [controller]) : undefined;
      } catch (e) {
        startDone.reject(e);
        throw e;
      }
      PromisePrototypeThen(PromiseResolve(started), () => startDone.resolve(undefined), (e) => startDone.reject(e));
    }
    get readable() {
      return this.#readable;
    }
    get writable() {
      return this.#writable;
    }
    get [SymbolToStringTag]() {
      return "TransformStream";
    }
  }

  class TextEncoderStream {
    #t;
    constructor() {
      // A high surrogate ending a chunk waits for the low one starting the
      // next: encoded apart, each would become U+FFFD.
      let pending = "";
      this.#t = new TransformStream({
        transform(chunk, c) {
          let text = pending + StringCtor(chunk);
          pending = "";
          const last = text.length > 0 ? StringPrototypeCharCodeAt(text, text.length - 1) : 0;
          if (last >= 0xd800 && last <= 0xdbff) {
            pending = StringPrototypeSlice(text, text.length - 1);
            text = StringPrototypeSlice(text, 0, text.length - 1);
          }
          if (text !== "") c.enqueue(encode(text));
        },
        flush(c) {
          if (pending !== "") c.enqueue(encode(pending));
        },
      });
    }
    get encoding() {
      return "utf-8";
    }
    get readable() {
      return this.#t.readable;
    }
    get writable() {
      return this.#t.writable;
    }
  }

  class TextDecoderStream {
    #decoder;
    #t;
    constructor(label = "utf-8", options = {}) {
      const decoder = new TextDecoder(label, options);
      this.#decoder = decoder;
      const emit = (text, c) => {
        if (text !== "") c.enqueue(text);
      };
      this.#t = new TransformStream({
        transform(chunk, c) {
          emit(decoder.decode(bytesOf(chunk), { stream: true }), c);
        },
        flush(c) {
          emit(decoder.decode(), c);
        },
      });
    }
    get encoding() {
      return this.#decoder.encoding;
    }
    get fatal() {
      return this.#decoder.fatal;
    }
    get ignoreBOM() {
      return this.#decoder.ignoreBOM;
    }
    get readable() {
      return this.#t.readable;
    }
    get writable() {
      return this.#t.writable;
    }
  }

  class CountQueuingStrategy {
    #hwm;
    constructor(init) {
      this.#hwm = NumberCtor(init?.highWaterMark);
    }
    get highWaterMark() {
      return this.#hwm;
    }
    get size() {
      return countSize;
    }
  }
  const countSize = function size() {
    return 1;
  };

  class ByteLengthQueuingStrategy {
    #hwm;
    constructor(init) {
      this.#hwm = NumberCtor(init?.highWaterMark);
    }
    get highWaterMark() {
      return this.#hwm;
    }
    get size() {
      return byteLengthSize;
    }
  }
  const byteLengthSize = function size(chunk) {
    return chunk.byteLength;
  };

  /// Why `source` cannot be piped into `dest` with `options` (checked
  /// before either is locked), or undefined.
  function pipeRefusal(source, dest, options) {
    const signal = options?.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      return new TypeErrorCtor("The \"options.signal\" property must be an AbortSignal");
    }
    if (streamState(source).reader !== null) return invalidState("ReadableStream is locked");
    if (writableState(dest).writer !== null) return invalidState("WritableStream is locked");
    return undefined;
  }

  /// ReadableStream.prototype.pipeTo.
  function pipeTo(source, destination, options) {
    if (writableState(destination) === undefined) return PromiseReject(new TypeErrorCtor("pipeTo's destination must be a WritableStream"));
    const refusal = pipeRefusal(source, destination, options);
    return refusal === undefined ? pipe(source, destination, options) : PromiseReject(refusal);
  }

  /// ReadableStream.prototype.pipeThrough.
  function pipeThrough(source, transform, options) {
    const writable = transform?.writable;
    const readable = transform?.readable;
    if (writableState(writable) === undefined || streamState(readable) === undefined) {
      throw new TypeErrorCtor("pipeThrough needs a { writable, readable } pair, such as a TransformStream");
    }
    const refusal = pipeRefusal(source, writable, options);
    if (refusal !== undefined) throw refusal;
    handled(pipe(source, writable, options));
    return readable;
  }

  return {
    ByteLengthQueuingStrategy,
    CountQueuingStrategy,
    TextDecoderStream,
    TextEncoderStream,
    TransformStream,
    TransformStreamDefaultController,
    WritableStream,
    WritableStreamDefaultController,
    WritableStreamDefaultWriter,
    pipeThrough,
    pipeTo,
  };
})
