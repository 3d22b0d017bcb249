// Node's `zlib` built-in over op_wt_zlib (flate2, in Rust): the one-shot
// functions, sync and with callbacks (the callback runs on a later tick, as
// in Node), and the stream classes. The streams buffer their input and
// compress or expand it in one call at the end: the output bytes are
// Node's, the chunking is not incremental.

import { builtin, registerBuiltin } from "ext:webtask_runtime/node/require.js";

const core = globalThis.Deno.core;
const { op_wt_zlib } = core.ops;
const { ArrayBufferIsView, ArrayBuffer: ArrayBufferCtor, ArrayPrototypePush, TypeError: TypeErrorCtor } =
  globalThis.__bootstrap.primordials;
const nativeQueueMicrotask = globalThis.queueMicrotask;

function createZlib() {
  const { Buffer } = builtin("buffer");
  const { Transform } = builtin("stream");
  const { inherits } = builtin("util");

  function input(data) {
    if (typeof data === "string") return Buffer.from(data, "utf8");
    if (ArrayBufferIsView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (data instanceof ArrayBufferCtor) return new Uint8Array(data);
    const err = new TypeErrorCtor(
      'The "buffer" argument must be of type string or an instance of Buffer, TypedArray, DataView, or ArrayBuffer.',
    );
    err.code = "ERR_INVALID_ARG_TYPE";
    throw err;
  }

  function run(mode, data, options) {
    const level = options && typeof options.level === "number" ? options.level : -1;
    const max = options && typeof options.maxOutputLength === "number" ? options.maxOutputLength : Infinity;
    let out;
    try {
      out = op_wt_zlib(mode, input(data), level, max);
    } catch (e) {
      const err = e instanceof RangeError ? e : new Error(e.message);
      if (!(e instanceof RangeError)) {
        err.errno = -3;
        err.code = "Z_DATA_ERROR";
      }
      throw err;
    }
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  const zlib = {};
  const MODES = ["gzip", "gunzip", "deflate", "inflate", "deflateRaw", "inflateRaw", "unzip"];
  const CLASSES = { gzip: "Gzip", gunzip: "Gunzip", deflate: "Deflate", inflate: "Inflate", deflateRaw: "DeflateRaw", inflateRaw: "InflateRaw", unzip: "Unzip" };

  for (const mode of MODES) {
    zlib[mode + "Sync"] = (data, options) => run(mode, data, options);
    zlib[mode] = (data, options, callback) => {
      if (typeof options === "function") [callback, options] = [options, undefined];
      if (typeof callback !== "function") throw new TypeErrorCtor('The "callback" argument must be of type function');
      let result;
      let error = null;
      try {
        result = run(mode, data, options);
      } catch (e) {
        error = e;
      }
      nativeQueueMicrotask(() => (error ? callback(error) : callback(null, result)));
    };
    const name = CLASSES[mode];
    const Class = function (options) {
      if (!(this instanceof Class)) return new Class(options);
      Transform.call(this, options);
      this._chunks = [];
      this._options = options;
    };
    inherits(Class, Transform);
    Class.prototype._transform = function (chunk, encoding, cb) {
      ArrayPrototypePush(this._chunks, typeof chunk === "string" ? Buffer.from(chunk, encoding) : chunk);
      cb();
    };
    Class.prototype._flush = function (cb) {
      let out;
      try {
        out = run(mode, Buffer.concat(this._chunks), this._options);
      } catch (e) {
        return cb(e);
      }
      this._chunks = [];
      cb(null, out);
    };
    Class.prototype.close = function (cb) {
      if (cb) nativeQueueMicrotask(cb);
      this.destroy();
    };
    zlib[name] = Class;
    zlib["create" + name] = (options) => new Class(options);
  }
  zlib.constants = {
    Z_NO_FLUSH: 0, Z_PARTIAL_FLUSH: 1, Z_SYNC_FLUSH: 2, Z_FULL_FLUSH: 3, Z_FINISH: 4, Z_BLOCK: 5,
    Z_OK: 0, Z_STREAM_END: 1, Z_NEED_DICT: 2, Z_ERRNO: -1, Z_STREAM_ERROR: -2, Z_DATA_ERROR: -3,
    Z_MEM_ERROR: -4, Z_BUF_ERROR: -5, Z_VERSION_ERROR: -6, Z_NO_COMPRESSION: 0, Z_BEST_SPEED: 1,
    Z_BEST_COMPRESSION: 9, Z_DEFAULT_COMPRESSION: -1, Z_FILTERED: 1, Z_HUFFMAN_ONLY: 2, Z_RLE: 3,
    Z_FIXED: 4, Z_DEFAULT_STRATEGY: 0,
  };
  Object.assign(zlib, zlib.constants);
  return zlib;
}

registerBuiltin("zlib", createZlib);
