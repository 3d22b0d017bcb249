// Node 20's adapters between its streams and the WHATWG streams
// (`Readable.fromWeb` / `toWeb`, the same on Writable and Duplex), which
// readable-stream leaves to its host: it ships an empty table and calls
// into it. build.mjs hands it this module instead.
//
// What each adapter promises, as Node's do: backpressure crosses over
// (a Node stream is paused while the web side's queue is full, a web
// write waits for the Node side's callback), an error on either side
// errors the other, and cancelling or destroying one side ends the other.
"use strict";

const { argType, coded } = require("./node-errors.js");

// readable-stream's classes, taken when an adapter is first used (this
// module is loaded while they are being defined).
const streams = () => require("readable-stream/lib/stream.js");

function isReadableStream(value) {
  return typeof ReadableStream === "function" && value instanceof ReadableStream;
}

function isWritableStream(value) {
  return typeof WritableStream === "function" && value instanceof WritableStream;
}

function options(value, name) {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object") throw argType(name, "of type object", value);
  return value;
}

// Node's AbortError (code ABORT_ERR), as readable-stream has it.
const abortError = (options) => new (require("readable-stream/lib/ours/errors.js").AbortError)(undefined, options);

// Node turns a stream that closed before it ended into an AbortError.
function fromNodeError(error) {
  return error?.code === "ERR_STREAM_PREMATURE_CLOSE" ? abortError({ cause: error }) : error;
}

// A callback of the guest's that throws destroys the stream, as in Node,
// rather than rejecting a promise nobody holds.
function calling(callback, stream) {
  return (error) => {
    try {
      callback(error);
    } catch (thrown) {
      streams().destroy(stream, thrown);
    }
  };
}

// A Node stream's write, writev and final when it writes to a web stream's
// `writer`: each write once the web side is ready for it. `self()` is the
// Node stream, `closed()` whether the web side is already closed.
function writingTo(writer, self, closed) {
  return {
    write(chunk, _encoding, callback) {
      const done = calling(callback, self());
      writer.ready.then(() => writer.write(chunk)).then(() => done(), done);
    },
    writev(chunks, callback) {
      const done = calling(callback, self());
      writer.ready.then(() => Promise.all(chunks.map(({ chunk }) => writer.write(chunk)))).then(() => done(), done);
    },
    final(callback) {
      const done = calling(callback, self());
      if (closed()) return done();
      writer.close().then(() => done(), done);
    },
  };
}

function newStreamReadableFromReadableStream(readableStream, opts) {
  if (!isReadableStream(readableStream)) throw argType("readableStream", "an instance of ReadableStream", readableStream);
  const { highWaterMark, encoding, objectMode = false, signal } = options(opts, "options");
  const { Readable, destroy } = streams();
  if (encoding !== undefined && !Buffer.isEncoding(encoding)) {
    // Node's own words, its two values swapped as they are there.
    throw coded(TypeError, "ERR_INVALID_ARG_VALUE", `The argument '${encoding}' is invalid. Received 'options.encoding'`);
  }
  const reader = readableStream.getReader();
  let closed = false;
  const readable = new Readable({
    objectMode,
    highWaterMark,
    encoding,
    signal,
    read() {
      reader.read().then(
        (chunk) => readable.push(chunk.done ? null : chunk.value),
        (error) => destroy(readable, error),
      );
    },
    destroy(error, callback) {
      const done = () => callback(error);
      if (closed) return done();
      reader.cancel(error).then(done, done);
    },
  });
  reader.closed.then(
    () => { closed = true; },
    (error) => { closed = true; destroy(readable, error); },
  );
  return readable;
}

function newReadableStreamFromStreamReadable(streamReadable, opts) {
  if (typeof streamReadable?._readableState !== "object") throw argType("streamReadable", "an stream.Readable", streamReadable);
  const { strategy } = options(opts, "options");
  const { destroy, finished, isDestroyed, isReadable } = streams();
  if (isDestroyed(streamReadable) || !isReadable(streamReadable)) {
    const empty = new ReadableStream();
    empty.cancel();
    return empty;
  }
  const objectMode = streamReadable.readableObjectMode;
  const highWaterMark = streamReadable.readableHighWaterMark;
  // Bytes are queued by their length, as Node 20 queues them.
  const queuing = strategy ?? (objectMode ? new CountQueuingStrategy({ highWaterMark }) : new ByteLengthQueuingStrategy({ highWaterMark }));
  let controller;
  let cancelled = false;
  const onData = (chunk) => {
    // A Buffer goes over as a copy (the producer may reuse its memory).
    if (Buffer.isBuffer(chunk) && !objectMode) chunk = new Uint8Array(chunk);
    controller.enqueue(chunk);
    if (controller.desiredSize <= 0) streamReadable.pause();
  };
  const cleanup = finished(streamReadable, (error) => {
    cleanup();
    streamReadable.on("error", () => {});
    streamReadable.off("data", onData);
    // Cancelled from the web side: that side is already done with.
    if (cancelled) return;
    if (error) return controller.error(fromNodeError(error));
    controller.close();
  });
  streamReadable.on("data", onData);
  return new ReadableStream({
    start(c) { controller = c; },
    pull() { streamReadable.resume(); },
    cancel(reason) {
      cancelled = true;
      destroy(streamReadable, reason);
    },
  }, queuing);
}

function newStreamWritableFromWritableStream(writableStream, opts) {
  if (!isWritableStream(writableStream)) throw argType("writableStream", "an instance of WritableStream", writableStream);
  const { highWaterMark, decodeStrings = true, objectMode = false, signal } = options(opts, "options");
  const { Writable, destroy } = streams();
  const writer = writableStream.getWriter();
  let closed = false;
  const writable = new Writable({
    highWaterMark,
    objectMode,
    decodeStrings,
    signal,
    ...writingTo(writer, () => writable, () => closed),
    // Destroyed with an error, the web side is aborted; without one, closed.
    destroy(error, callback) {
      const done = () => callback(error);
      if (closed) return done();
      (error ? writer.abort(error) : writer.close()).then(done, done);
    },
  });
  writer.closed.then(
    () => { closed = true; },
    (error) => { closed = true; destroy(writable, error); },
  );
  return writable;
}

function newWritableStreamFromStreamWritable(streamWritable) {
  if (typeof streamWritable?._writableState !== "object") throw argType("streamWritable", "an stream.Writable", streamWritable);
  const { destroy, finished, isDestroyed, isWritable } = streams();
  if (isDestroyed(streamWritable) || !isWritable(streamWritable)) {
    const closed = new WritableStream();
    closed.close();
    return closed;
  }
  const highWaterMark = streamWritable.writableHighWaterMark;
  // Chunks counted, whatever their size, as Node 20 counts them.
  const queuing = new CountQueuingStrategy({ highWaterMark });
  let controller;
  let drained = null;
  let closing = null;
  const onDrain = () => {
    drained?.resolve();
    drained = null;
  };
  streamWritable.on("drain", onDrain);
  const cleanup = finished(streamWritable, (error) => {
    cleanup();
    streamWritable.on("error", () => {});
    streamWritable.off("drain", onDrain);
    error = fromNodeError(error);
    if (error) {
      drained?.reject(error);
      closing?.reject(error);
      controller.error(error);
    } else if (closing) {
      closing.resolve();
    } else {
      // Ended from the Node side while the web side could still write.
      controller.error(abortError());
    }
    drained = closing = null;
  });
  return new WritableStream({
    start(c) { controller = c; },
    // One write at a time (the web stream waits for each): a write the
    // Node side cannot take at once resolves when it drains.
    write(chunk) {
      const write = () => {
        if (streamWritable.write(chunk)) return;
        drained = Promise.withResolvers();
        return drained.promise;
      };
      if (!streamWritable.writableNeedDrain) return write();
      drained = Promise.withResolvers();
      return drained.promise.then(write);
    },
    abort(reason) { destroy(streamWritable, reason); },
    close() {
      if (!streamWritable.writableEnded) {
        closing = Promise.withResolvers();
        streamWritable.end();
        return closing.promise;
      }
    },
  }, queuing);
}

function newStreamDuplexFromReadableWritablePair(pair, opts) {
  if (pair === null || typeof pair !== "object") throw argType("pair", "of type object", pair);
  const { readable, writable } = pair;
  if (!isReadableStream(readable)) throw argType("pair.readable", "an instance of ReadableStream", readable);
  if (!isWritableStream(writable)) throw argType("pair.writable", "an instance of WritableStream", writable);
  const { allowHalfOpen = false, decodeStrings = true, encoding, highWaterMark, objectMode = false, signal } = options(opts, "options");
  const { Duplex, destroy } = streams();
  // One stream reading and writing the web pair directly: nothing is read
  // from the web side before the Duplex is read.
  const reader = readable.getReader();
  const writer = writable.getWriter();
  let writableClosed = false;
  let readableClosed = false;
  const duplex = new Duplex({
    allowHalfOpen,
    decodeStrings,
    encoding,
    highWaterMark,
    objectMode,
    signal,
    ...writingTo(writer, () => duplex, () => writableClosed),
    read() {
      reader.read().then((chunk) => duplex.push(chunk.done ? null : chunk.value), (error) => destroy(duplex, error));
    },
    destroy(error, callback) {
      const done = () => callback(error);
      const ending = [];
      if (!writableClosed) ending.push(error ? writer.abort(error) : writer.close());
      if (!readableClosed) ending.push(reader.cancel(error));
      Promise.all(ending).then(done, done);
    },
  });
  // Either side failing fails the Duplex. As in Node, a failed write also
  // cancels the web readable; a failed read leaves the web writable be.
  writer.closed.then(() => { writableClosed = true; }, (error) => {
    writableClosed = true;
    destroy(duplex, error);
  });
  reader.closed.then(() => { readableClosed = true; }, (error) => {
    writableClosed = readableClosed = true;
    destroy(duplex, error);
  });
  return duplex;
}

function newReadableWritablePairFromDuplex(duplex) {
  if (typeof duplex?._readableState !== "object" || typeof duplex?._writableState !== "object") {
    throw argType("duplex", "an stream.Duplex", duplex);
  }
  return { readable: newReadableStreamFromStreamReadable(duplex), writable: newWritableStreamFromStreamWritable(duplex) };
}

module.exports = {
  newStreamReadableFromReadableStream,
  newReadableStreamFromStreamReadable,
  newStreamWritableFromWritableStream,
  newWritableStreamFromStreamWritable,
  newStreamDuplexFromReadableWritablePair,
  newReadableWritablePairFromDuplex,
};
