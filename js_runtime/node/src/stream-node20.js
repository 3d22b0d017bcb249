// What Node 20's `stream` has beyond readable-stream 4: `duplexPair`,
// `_isArrayBufferView`, and the `stream/consumers` module.
"use strict";

function withNode20(stream) {
  stream._isArrayBufferView = ArrayBuffer.isView;
  return withDuplexPair(stream);
}

// duplexPair(): two Duplex streams, each reading what the other writes
// (Node 20.17). A write completes once the other side has read it.
function withDuplexPair(stream) {
  const { Duplex } = stream;
  const kOther = Symbol("other side");
  const kWritten = Symbol("write waiting to be read");
  class DuplexSide extends Duplex {
    _read() {
      const written = this[kWritten];
      this[kWritten] = null;
      written?.();
    }
    _write(chunk, _encoding, callback) {
      if (chunk.length === 0) return process.nextTick(callback);
      this[kOther].push(chunk);
      this[kOther][kWritten] = callback;
    }
    _final(callback) {
      this[kOther].on("end", callback);
      this[kOther].push(null);
    }
  }
  stream.duplexPair = function duplexPair(options) {
    const sides = [new DuplexSide(options), new DuplexSide(options)];
    sides[0][kOther] = sides[1];
    sides[1][kOther] = sides[0];
    return sides;
  };
  return stream;
}

// `stream/consumers`: a Node stream or a WHATWG one (anything async
// iterable) read to its end, as Node 20 reads it.
async function blob(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return new Blob(chunks);
}

async function arrayBuffer(stream) {
  return (await blob(stream)).arrayBuffer();
}

async function buffer(stream) {
  return Buffer.from(await arrayBuffer(stream));
}

async function text(stream) {
  const decoder = new TextDecoder();
  let out = "";
  for await (const chunk of stream) out += typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true });
  return out + decoder.decode();
}

async function json(stream) {
  return JSON.parse(await text(stream));
}

module.exports = { withNode20, consumers: { arrayBuffer, blob, buffer, text, json } };
