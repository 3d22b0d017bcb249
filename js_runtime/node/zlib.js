// Node's `zlib` built-in over the zlib ops (flate2, in Rust): the one-shot
// functions, sync and with callbacks (the callback runs on a later tick, as
// in Node), and the stream classes, which compress or expand each chunk as
// it is written. A host stream does a slice of work per op call into an
// output buffer allocated here (so the output counts against the
// isolate's ArrayBuffer limit, and the CPU limit can stop a long run
// between calls); this file loops until the input is used up.

import { builtin, codedError, received, registerBuiltin } from "ext:webtask_runtime/node/require.js";

const core = globalThis.Deno.core;
const { op_wt_zlib_new, op_wt_zlib_run, op_wt_crc32 } = core.ops;
// Buffers the ops write into are made with these, never with a global a
// guest can replace: an op's output must not alias its input.
const {
  ArrayBufferIsView,
  ArrayBuffer: ArrayBufferCtor,
  ArrayPrototypeIncludes,
  ArrayPrototypePush,
  NumberIsInteger,
  ObjectAssign,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectKeys,
  SafeWeakMap,
  RangeError: RangeErrorCtor,
  StringPrototypeSlice,
  StringPrototypeStartsWith,
  TypeError: TypeErrorCtor,
  Uint8Array: Uint8ArrayCtor,
  Uint32Array: Uint32ArrayCtor,
} = globalThis.__bootstrap.primordials;
const nativeQueueMicrotask = globalThis.queueMicrotask;

// Output buffer per op call (Node's default chunk is 16 KiB).
const CHUNK = 64 * 1024;
// The op's [input used, output written] after each call.
let info;
// zlib's and brotli's constants, made on first use.
let zMade, brotliMade;
const Z = () => (zMade ??= zConstants());
const BROTLI = () => (brotliMade ??= brotliConstants());

function zlibError(e) {
  if (e instanceof RangeError) {
    if (/^Cannot create a Buffer larger than/.test(e.message)) e.code = "ERR_BUFFER_TOO_LARGE";
    return e;
  }
  const text = String(e.message);
  const colon = text.indexOf(": ");
  const code = colon > 0 ? text.slice(0, colon) : "Z_DATA_ERROR";
  const err = new Error(colon > 0 ? text.slice(colon + 2) : text);
  err.code = code;
  // A brotli decoder's code is `ERR_` and its error's name past
  // "BROTLI_DECODER"; its errno is that error's number.
  err.errno = StringPrototypeStartsWith(code, "ERR_") ? BROTLI()[`BROTLI_DECODER${StringPrototypeSlice(code, 4)}`] ?? -31 : Z()[code] ?? -3;
  return err;
}

// Node's parameters a brotli decoder takes (its `params` keys).
const BROTLI_DECODER_PARAMS = [0, 1];

// The decoder's mode: its `params` checked as Node checks them, the large
// window asked for or not.
function brotliMode(options) {
  const params = options?.params;
  if (params === undefined || params === null || typeof params !== "object") return "brotliDecompress";
  let large = false;
  for (const key of ObjectKeys(params)) {
    const id = +key;
    if (!NumberIsInteger(id) || !ArrayPrototypeIncludes(BROTLI_DECODER_PARAMS, id)) {
      throw codedError(RangeErrorCtor, "ERR_BROTLI_INVALID_PARAM", `${key} is not a valid Brotli parameter`);
    }
    const value = params[key];
    if (typeof value !== "number" && typeof value !== "boolean") {
      throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "options.params[key]" property must be of type number. Received ${received(value)}`);
    }
    if (id === BROTLI().BROTLI_DECODER_PARAM_LARGE_WINDOW) large = !!value;
  }
  return large ? "brotliDecompressLargeWindow" : "brotliDecompress";
}

function options(mode, options, oneShot) {
  if (mode === "brotliDecompress") mode = brotliMode(options);
  const level = options && typeof options.level === "number" ? options.level : -1;
  const max = options && typeof options.maxOutputLength === "number" ? options.maxOutputLength : Infinity;
  try {
    return op_wt_zlib_new(mode, level, max, oneShot);
  } catch (e) {
    throw zlibError(e);
  }
}

// Runs `stream` over `bytes`, handing each piece of output to `emit`.
// Returns true once the stream has ended.
function drive(stream, bytes, finish, emit) {
  info ??= new Uint32ArrayCtor(2);
  let at = 0;
  for (;;) {
    const out = new Uint8ArrayCtor(CHUNK);
    let status;
    try {
      status = op_wt_zlib_run(stream, bytes, at, finish, out, info);
    } catch (e) {
      throw zlibError(e);
    }
    const before = at;
    at = info[0];
    const n = info[1];
    if (n > 0) emit(n === CHUNK ? out : out.slice(0, n));
    if (status === 1) return true;
    // Out of input (a truncated stream at the end is the op's error); a
    // call without progress otherwise means the isolate is being stopped.
    if (n === 0 && at === before && !finish && at === bytes.length) return false;
  }
}

/// A compressor or decompressor (`mode`: "gzip", "inflateRaw", ...) for
/// the web's CompressionStream and DecompressionStream: each `push` of
/// bytes, and the `finish`, returns the output it made.
export function webCodec(mode) {
  const stream = options(mode, undefined, false);
  let ended = false;
  const step = (bytes, finish) => {
    const out = [];
    if (!ended) ended = drive(stream, bytes, finish, (chunk) => ArrayPrototypePush(out, chunk));
    return out;
  };
  return { push: (bytes) => step(bytes, false), finish: () => step(new Uint8ArrayCtor(0), true) };
}

// zlib.constants as Node 20 lists them; made on first require, not kept
// in every isolate's snapshot.
const zConstants = () => ObjectFreeze({
  Z_NO_FLUSH: 0, Z_PARTIAL_FLUSH: 1, Z_SYNC_FLUSH: 2, Z_FULL_FLUSH: 3, Z_FINISH: 4, Z_BLOCK: 5,
  Z_OK: 0, Z_STREAM_END: 1, Z_NEED_DICT: 2, Z_ERRNO: -1, Z_STREAM_ERROR: -2, Z_DATA_ERROR: -3,
  Z_MEM_ERROR: -4, Z_BUF_ERROR: -5, Z_VERSION_ERROR: -6, Z_NO_COMPRESSION: 0, Z_BEST_SPEED: 1,
  Z_BEST_COMPRESSION: 9, Z_DEFAULT_COMPRESSION: -1, Z_FILTERED: 1, Z_HUFFMAN_ONLY: 2, Z_RLE: 3,
  Z_FIXED: 4, Z_DEFAULT_STRATEGY: 0, ZLIB_VERNUM: 4880, DEFLATE: 1, INFLATE: 2, GZIP: 3, GUNZIP: 4,
  DEFLATERAW: 5, INFLATERAW: 6, UNZIP: 7, Z_MIN_WINDOWBITS: 8, Z_MAX_WINDOWBITS: 15,
  Z_DEFAULT_WINDOWBITS: 15, Z_MIN_CHUNK: 64, Z_MAX_CHUNK: Infinity, Z_DEFAULT_CHUNK: 16384,
  Z_MIN_MEMLEVEL: 1, Z_MAX_MEMLEVEL: 9, Z_DEFAULT_MEMLEVEL: 8, Z_MIN_LEVEL: -1, Z_MAX_LEVEL: 9,
  Z_DEFAULT_LEVEL: -1,
});
const brotliConstants = () => ObjectFreeze({
  BROTLI_DECODE: 8, BROTLI_ENCODE: 9, BROTLI_OPERATION_PROCESS: 0, BROTLI_OPERATION_FLUSH: 1,
  BROTLI_OPERATION_FINISH: 2, BROTLI_OPERATION_EMIT_METADATA: 3, BROTLI_PARAM_MODE: 0,
  BROTLI_MODE_GENERIC: 0, BROTLI_MODE_TEXT: 1, BROTLI_MODE_FONT: 2, BROTLI_DEFAULT_MODE: 0,
  BROTLI_PARAM_QUALITY: 1, BROTLI_MIN_QUALITY: 0, BROTLI_MAX_QUALITY: 11, BROTLI_DEFAULT_QUALITY: 11,
  BROTLI_PARAM_LGWIN: 2, BROTLI_MIN_WINDOW_BITS: 10, BROTLI_MAX_WINDOW_BITS: 24,
  BROTLI_LARGE_MAX_WINDOW_BITS: 30, BROTLI_DEFAULT_WINDOW: 22, BROTLI_PARAM_LGBLOCK: 3,
  BROTLI_MIN_INPUT_BLOCK_BITS: 16, BROTLI_MAX_INPUT_BLOCK_BITS: 24,
  BROTLI_PARAM_DISABLE_LITERAL_CONTEXT_MODELING: 4, BROTLI_PARAM_SIZE_HINT: 5,
  BROTLI_PARAM_LARGE_WINDOW: 6, BROTLI_PARAM_NPOSTFIX: 7, BROTLI_PARAM_NDIRECT: 8,
  BROTLI_DECODER_RESULT_ERROR: 0, BROTLI_DECODER_RESULT_SUCCESS: 1,
  BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT: 2, BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT: 3,
  BROTLI_DECODER_PARAM_DISABLE_RING_BUFFER_REALLOCATION: 0, BROTLI_DECODER_PARAM_LARGE_WINDOW: 1,
  BROTLI_DECODER_NO_ERROR: 0, BROTLI_DECODER_SUCCESS: 1, BROTLI_DECODER_NEEDS_MORE_INPUT: 2,
  BROTLI_DECODER_NEEDS_MORE_OUTPUT: 3, BROTLI_DECODER_ERROR_FORMAT_EXUBERANT_NIBBLE: -1,
  BROTLI_DECODER_ERROR_FORMAT_RESERVED: -2, BROTLI_DECODER_ERROR_FORMAT_EXUBERANT_META_NIBBLE: -3,
  BROTLI_DECODER_ERROR_FORMAT_SIMPLE_HUFFMAN_ALPHABET: -4, BROTLI_DECODER_ERROR_FORMAT_SIMPLE_HUFFMAN_SAME: -5,
  BROTLI_DECODER_ERROR_FORMAT_CL_SPACE: -6, BROTLI_DECODER_ERROR_FORMAT_HUFFMAN_SPACE: -7,
  BROTLI_DECODER_ERROR_FORMAT_CONTEXT_MAP_REPEAT: -8, BROTLI_DECODER_ERROR_FORMAT_BLOCK_LENGTH_1: -9,
  BROTLI_DECODER_ERROR_FORMAT_BLOCK_LENGTH_2: -10, BROTLI_DECODER_ERROR_FORMAT_TRANSFORM: -11,
  BROTLI_DECODER_ERROR_FORMAT_DICTIONARY: -12, BROTLI_DECODER_ERROR_FORMAT_WINDOW_BITS: -13,
  BROTLI_DECODER_ERROR_FORMAT_PADDING_1: -14, BROTLI_DECODER_ERROR_FORMAT_PADDING_2: -15,
  BROTLI_DECODER_ERROR_FORMAT_DISTANCE: -16, BROTLI_DECODER_ERROR_DICTIONARY_NOT_SET: -19,
  BROTLI_DECODER_ERROR_INVALID_ARGUMENTS: -20, BROTLI_DECODER_ERROR_ALLOC_CONTEXT_MODES: -21,
  BROTLI_DECODER_ERROR_ALLOC_TREE_GROUPS: -22, BROTLI_DECODER_ERROR_ALLOC_CONTEXT_MAP: -25,
  BROTLI_DECODER_ERROR_ALLOC_RING_BUFFER_1: -26, BROTLI_DECODER_ERROR_ALLOC_RING_BUFFER_2: -27,
  BROTLI_DECODER_ERROR_ALLOC_BLOCK_TYPE_TREES: -30, BROTLI_DECODER_ERROR_UNREACHABLE: -31,
});

function createZlib() {
  const { Buffer } = builtin("buffer");
  const { Transform } = builtin("stream");
  const { inherits } = builtin("util");
  // Stream object to its host stream, out of the guest's reach.
  const streams = new SafeWeakMap();

  function input(data) {
    if (typeof data === "string") return Buffer.from(data, "utf8");
    if (ArrayBufferIsView(data)) return new Uint8ArrayCtor(data.buffer, data.byteOffset, data.byteLength);
    if (data instanceof ArrayBufferCtor) return new Uint8ArrayCtor(data);
    const err = new TypeErrorCtor(
      'The "buffer" argument must be of type string or an instance of Buffer, TypedArray, DataView, or ArrayBuffer.',
    );
    err.code = "ERR_INVALID_ARG_TYPE";
    throw err;
  }

  function run(mode, data, opts) {
    const stream = options(mode, opts, true);
    const chunks = [];
    let total = 0;
    drive(stream, input(data), true, (chunk) => {
      ArrayPrototypePush(chunks, chunk);
      total += chunk.length;
    });
    const out = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, total);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  const zlib = {};
  // Brotli decodes only (see the ops' zlib.rs for why it never encodes).
  const MODES = ["gzip", "gunzip", "deflate", "inflate", "deflateRaw", "inflateRaw", "unzip", "brotliDecompress"];
  const CLASSES = {
    gzip: "Gzip", gunzip: "Gunzip", deflate: "Deflate", inflate: "Inflate", deflateRaw: "DeflateRaw", inflateRaw: "InflateRaw", unzip: "Unzip",
    brotliDecompress: "BrotliDecompress",
  };

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
    const Class = function (opts) {
      if (!(this instanceof Class)) return new Class(opts);
      Transform.call(this, opts);
      streams.set(this, options(mode, opts, false));
      this._ended = false;
    };
    // `Gzip.name` is "Gzip", as in Node, not the variable's name.
    ObjectDefineProperty(Class, "name", { __proto__: null, value: name, configurable: true });
    inherits(Class, Transform);
    Class.prototype._run = function (bytes, finish, cb) {
      if (this._ended) return cb();
      try {
        this._ended = drive(streams.get(this), bytes, finish, (chunk) => this.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
      } catch (e) {
        return cb(e);
      }
      cb();
    };
    Class.prototype._transform = function (chunk, encoding, cb) {
      this._run(typeof chunk === "string" ? Buffer.from(chunk, encoding) : input(chunk), false, cb);
    };
    Class.prototype._flush = function (cb) {
      this._run(new Uint8ArrayCtor(0), true, cb);
    };
    Class.prototype.close = function (cb) {
      if (cb) nativeQueueMicrotask(cb);
      this.destroy();
    };
    zlib[name] = Class;
    zlib["create" + name] = (options) => new Class(options);
  }
  zlib.constants = { ...Z(), ...BROTLI() };
  // Node puts zlib's constants on the module too, but not brotli's.
  ObjectAssign(zlib, Z());
  zlib.crc32 = crc32;
  return zlib;
}

// Node 20.15's zlib.crc32: of a string's UTF-8 or a view's bytes,
// continuing from `value` (a previous result), in Rust.
function crc32(data, value = 0) {
  let bytes;
  if (typeof data === "string") bytes = builtin("buffer").Buffer.from(data, "utf8");
  else if (ArrayBufferIsView(data)) bytes = new Uint8ArrayCtor(data.buffer, data.byteOffset, data.byteLength);
  else throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "data" argument must be of type string or an instance of Buffer, TypedArray, or DataView. Received ${received(data)}`);
  if (typeof value !== "number") throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "value" argument must be of type number. Received ${received(value)}`);
  if (!NumberIsInteger(value)) throw codedError(RangeErrorCtor, "ERR_OUT_OF_RANGE", `The value of "value" is out of range. It must be an integer. Received ${value}`);
  if (value < 0 || value > 0xffffffff) {
    throw codedError(RangeErrorCtor, "ERR_OUT_OF_RANGE", `The value of "value" is out of range. It must be >= 0 && <= 4294967295. Received ${value}`);
  }
  return op_wt_crc32(bytes, value);
}

registerBuiltin("zlib", createZlib);
