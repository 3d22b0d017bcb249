// Web API globals for guest code: TextEncoder/TextDecoder, atob/btoa,
// URL/URLSearchParams (whatwg-url, from the polyfill bundle), DOMException,
// Event, EventTarget, AbortController/AbortSignal, ReadableStream, Blob,
// File, FormData, Headers, Request, Response and `fetch` (over the host's
// egress, streaming both ways), WritableStream, TransformStream (pipeTo,
// pipeThrough, TextEncoderStream, TextDecoderStream; from streams.js, on
// first use), structuredClone and `crypto` (WebCrypto). `install(global)`
// puts them on the guest global at lockdown.
//
// Not here: BYOB readers, CompressionStream.

import { polyfill } from "ext:webtask_runtime/node/require.js";
import { Crypto, CryptoKey, getRandomValues, SubtleCrypto, webcrypto } from "ext:webtask_runtime/node/crypto.js";
import { webCodec } from "ext:webtask_runtime/node/zlib.js";
import {
  abort as abortExchange,
  BODY_FULL,
  BODY_NONE,
  BODY_STREAM,
  finish as finishExchange,
  head as exchangeHead,
  read as exchangeRead,
  start as startExchange,
  write as exchangeWrite,
} from "ext:webtask_runtime/node/egress.js";

const core = globalThis.Deno.core;
const {
  ArrayBufferIsView,
  ArrayBuffer: ArrayBufferCtor,
  ArrayBufferPrototypeSlice,
  ArrayPrototypeFilter,
  ArrayPrototypeFind,
  ArrayPrototypeFindIndex,
  ArrayPrototypeIncludes,
  ArrayPrototypeJoin,
  ArrayPrototypeMap,
  ArrayPrototypePush,
  ArrayPrototypeShift,
  ArrayPrototypeSlice,
  ArrayPrototypeSome,
  ArrayPrototypeSort,
  ArrayPrototypeSplice,
  Error,
  JSONParse,
  JSONStringify,
  MathMax,
  MathMin,
  MathTrunc,
  Number: NumberCtor,
  NumberPrototypeToString,
  ObjectCreate,
  ObjectDefineProperty,
  SymbolFor,
  ObjectGetPrototypeOf,
  ObjectKeys,
  ObjectPrototypeHasOwnProperty,
  Promise: PromiseCtor,
  PromisePrototypeThen,
  PromiseReject,
  PromiseResolve,
  RangeError,
  ReflectApply,
  RegExpPrototypeTest,
  SafeArrayIterator,
  SafeMap,
  SafeMapIterator,
  String: StringCtor,
  StringFromCharCode,
  StringPrototypeCharCodeAt,
  StringPrototypeEndsWith,
  StringPrototypeIndexOf,
  StringPrototypePadStart,
  StringPrototypeReplace,
  StringPrototypeSlice,
  StringPrototypeSplit,
  StringPrototypeStartsWith,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  StringPrototypeTrim,
  TypeError: TypeErrorCtor,
  TypedArrayPrototypeSet,
  TypedArrayPrototypeSlice,
  TypedArrayPrototypeSubarray,
  Uint8Array: Uint8ArrayCtor,
} = globalThis.__bootstrap.primordials;
const { encode, decode } = core;
const primordials = globalThis.__bootstrap.primordials;
const { op_wt_load_streams } = core.ops;
// The op itself, with no deserializers: core.structuredClone hands it
// deno_core's registry, and an object carrying deno_core's host-object
// brand (guest code can make one) would then reach a deserializer lookup
// that panics the process instead of throwing.
const { op_structured_clone } = core.ops;

// ---------------------------------------------------------------------------
// Encoding.
// ---------------------------------------------------------------------------

class TextEncoder {
  get encoding() {
    return "utf-8";
  }
  encode(input = "") {
    return encode(StringCtor(input));
  }
  encodeInto(source, dest) {
    const bytes = encode(StringCtor(source));
    let n = bytes.length <= dest.length ? bytes.length : dest.length;
    // Never split a character.
    while (n < bytes.length && n > 0 && (bytes[n] & 0xc0) === 0x80) n--;
    dest.set(bytes.subarray(0, n));
    let read = 0;
    const text = StringCtor(source);
    let counted = 0;
    while (read < text.length && counted < n) {
      const c = StringPrototypeCharCodeAt(text, read);
      const width = c < 0x80 ? 1 : c < 0x800 ? 2 : c >= 0xd800 && c <= 0xdbff ? 4 : 3;
      counted += width;
      read += width === 4 ? 2 : 1;
    }
    return { read, written: n };
  }
}

function validUtf8(b) {
  for (let i = 0; i < b.length;) {
    const c = b[i];
    let n;
    if (c < 0x80) n = 0;
    else if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c >= 0xe0 && c <= 0xef) n = 2;
    else if (c >= 0xf0 && c <= 0xf4) n = 3;
    else return false;
    if (i + n >= b.length && n > 0) return false;
    for (let k = 1; k <= n; k++) if ((b[i + k] & 0xc0) !== 0x80) return false;
    if (n === 2 && ((c === 0xe0 && b[i + 1] < 0xa0) || (c === 0xed && b[i + 1] > 0x9f))) return false;
    if (n === 3 && ((c === 0xf0 && b[i + 1] < 0x90) || (c === 0xf4 && b[i + 1] > 0x8f))) return false;
    i += n + 1;
  }
  return true;
}

function bytesOf(input) {
  if (input === undefined) return new Uint8ArrayCtor(0);
  if (ArrayBufferIsView(input)) return new Uint8ArrayCtor(input.buffer, input.byteOffset, input.byteLength);
  if (input instanceof ArrayBufferCtor) return new Uint8ArrayCtor(input);
  throw new TypeErrorCtor("The provided value is not of type '(ArrayBuffer or ArrayBufferView)'");
}

/// Bytes of `bytes` that end in a whole UTF-8 character (the rest waits
/// for the next chunk of a stream).
function completeUtf8(bytes) {
  const end = bytes.length;
  let back = 0;
  while (back < 3 && end - back > 0 && (bytes[end - back - 1] & 0xc0) === 0x80) back++;
  if (end - back === 0) return end;
  const lead = bytes[end - back - 1];
  const need = lead >= 0xf0 ? 3 : lead >= 0xe0 ? 2 : lead >= 0xc0 ? 1 : 0;
  return need > back ? end - back - 1 : end;
}

const isBom = (bytes) => bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf;

class TextDecoder {
  #fatal;
  #ignoreBOM;
  // `{ stream: true }`: the bytes of a character cut by the chunk's end,
  // and whether text was already decoded (a BOM counts only at the start).
  #held = null;
  #midStream = false;
  constructor(label = "utf-8", options = {}) {
    const l = StringPrototypeToLowerCase(StringCtor(label));
    if (l !== "utf-8" && l !== "utf8" && l !== "unicode-1-1-utf-8") {
      throw new RangeError(`The encoding '${label}' is not supported by webtask's TextDecoder (utf-8 only)`);
    }
    this.#fatal = !!options.fatal;
    this.#ignoreBOM = !!options.ignoreBOM;
  }
  get encoding() {
    return "utf-8";
  }
  get fatal() {
    return this.#fatal;
  }
  get ignoreBOM() {
    return this.#ignoreBOM;
  }
  decode(input, options) {
    const stream = !!options?.stream;
    let bytes = bytesOf(input);
    if (this.#held !== null) {
      const joined = new Uint8ArrayCtor(this.#held.length + bytes.length);
      TypedArrayPrototypeSet(joined, this.#held);
      TypedArrayPrototypeSet(joined, bytes, this.#held.length);
      bytes = joined;
      this.#held = null;
    }
    if (stream) {
      const cut = completeUtf8(bytes);
      if (cut < bytes.length) {
        this.#held = TypedArrayPrototypeSlice(bytes, cut);
        bytes = TypedArrayPrototypeSubarray(bytes, 0, cut);
      }
    }
    const atStart = !this.#midStream;
    this.#midStream = stream && (bytes.length > 0 || this.#midStream);
    if (this.#fatal && !validUtf8(bytes)) {
      this.#held = null;
      this.#midStream = false;
      const err = new TypeErrorCtor("The encoded data was not valid for encoding utf-8");
      err.code = "ERR_ENCODING_INVALID_ENCODED_DATA";
      throw err;
    }
    // core.decode strips a BOM itself: keep it when asked to, or when it is
    // not at the stream's start.
    if ((this.#ignoreBOM || !atStart) && isBom(bytes)) {
      return "\ufeff" + decode(TypedArrayPrototypeSubarray(bytes, 3));
    }
    return decode(bytes);
  }
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_INDEX = new SafeMap();
for (let i = 0; i < 64; i++) B64_INDEX.set(B64[i], i);

function invalidCharacter(msg) {
  const err = new Error(msg);
  err.name = "InvalidCharacterError";
  return err;
}

function btoa(data) {
  if (arguments.length === 0) throw new TypeErrorCtor("1 argument required, but only 0 present.");
  const s = StringCtor(data);
  let out = "";
  for (let i = 0; i < s.length; i += 3) {
    const a = StringPrototypeCharCodeAt(s, i);
    const b = i + 1 < s.length ? StringPrototypeCharCodeAt(s, i + 1) : 0;
    const c = i + 2 < s.length ? StringPrototypeCharCodeAt(s, i + 2) : 0;
    if (a > 255 || b > 255 || c > 255) throw invalidCharacter("Invalid character");
    out += B64[a >> 2] + B64[((a & 3) << 4) | (b >> 4)] +
      (i + 1 < s.length ? B64[((b & 15) << 2) | (c >> 6)] : "=") + (i + 2 < s.length ? B64[c & 63] : "=");
  }
  return out;
}

function atob(data) {
  if (arguments.length === 0) throw new TypeErrorCtor("1 argument required, but only 0 present.");
  let s = "";
  const input = StringCtor(data);
  for (let i = 0; i < input.length; i++) {
    const ch = input[i];
    if (ch !== " " && ch !== "\t" && ch !== "\n" && ch !== "\f" && ch !== "\r") s += ch;
  }
  if (s.length % 4 === 0) {
    if (s[s.length - 1] === "=") s = s.slice(0, s[s.length - 2] === "=" ? -2 : -1);
  }
  if (s.length % 4 === 1) throw invalidCharacter("The string to be decoded is not correctly encoded.");
  let out = "";
  let bits = 0;
  let acc = 0;
  for (let i = 0; i < s.length; i++) {
    const v = B64_INDEX.get(s[i]);
    if (v === undefined) throw invalidCharacter("The string to be decoded is not correctly encoded.");
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += StringCtor.fromCharCode((acc >> bits) & 0xff);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// DOMException.
// ---------------------------------------------------------------------------

const DOM_CODES = {
  IndexSizeError: 1, HierarchyRequestError: 3, WrongDocumentError: 4, InvalidCharacterError: 5,
  NoModificationAllowedError: 7, NotFoundError: 8, NotSupportedError: 9, InvalidStateError: 11, SyntaxError: 12,
  InvalidModificationError: 13, NamespaceError: 14, InvalidAccessError: 15, TypeMismatchError: 17, SecurityError: 18,
  NetworkError: 19, AbortError: 20, URLMismatchError: 21, QuotaExceededError: 22, TimeoutError: 23,
  InvalidNodeTypeError: 24, DataCloneError: 25,
};

class DOMException extends Error {
  #name;
  #code;
  constructor(message = "", options = "Error") {
    const withCause = options !== null && typeof options === "object" && "cause" in options;
    super(StringCtor(message), withCause ? { cause: options.cause } : undefined);
    this.#name = options !== null && typeof options === "object"
      ? ("name" in options ? StringCtor(options.name) : "Error")
      : StringCtor(options);
    this.#code = ObjectPrototypeHasOwnProperty(DOM_CODES, this.#name) ? DOM_CODES[this.#name] : 0;
  }
  get name() {
    return #name in this ? this.#name : "Error";
  }
  get code() {
    return #code in this ? this.#code : 0;
  }
  get [Symbol.toStringTag]() {
    return "DOMException";
  }
}
{
  const legacy = [
    ["INDEX_SIZE_ERR", 1], ["DOMSTRING_SIZE_ERR", 2], ["HIERARCHY_REQUEST_ERR", 3], ["WRONG_DOCUMENT_ERR", 4],
    ["INVALID_CHARACTER_ERR", 5], ["NO_DATA_ALLOWED_ERR", 6], ["NO_MODIFICATION_ALLOWED_ERR", 7], ["NOT_FOUND_ERR", 8],
    ["NOT_SUPPORTED_ERR", 9], ["INUSE_ATTRIBUTE_ERR", 10], ["INVALID_STATE_ERR", 11], ["SYNTAX_ERR", 12],
    ["INVALID_MODIFICATION_ERR", 13], ["NAMESPACE_ERR", 14], ["INVALID_ACCESS_ERR", 15], ["VALIDATION_ERR", 16],
    ["TYPE_MISMATCH_ERR", 17], ["SECURITY_ERR", 18], ["NETWORK_ERR", 19], ["ABORT_ERR", 20], ["URL_MISMATCH_ERR", 21],
    ["QUOTA_EXCEEDED_ERR", 22], ["TIMEOUT_ERR", 23], ["INVALID_NODE_TYPE_ERR", 24], ["DATA_CLONE_ERR", 25],
  ];
  for (let i = 0; i < legacy.length; i++) {
    const desc = { value: legacy[i][1], enumerable: true };
    ObjectDefineProperty(DOMException, legacy[i][0], desc);
    ObjectDefineProperty(DOMException.prototype, legacy[i][0], desc);
  }
}

// ---------------------------------------------------------------------------
// Events and abort.
// ---------------------------------------------------------------------------

class Event {
  #type;
  constructor(type, init = {}) {
    if (arguments.length === 0) throw new TypeErrorCtor("1 argument required");
    this.#type = StringCtor(type);
    this.bubbles = !!init.bubbles;
    this.cancelable = !!init.cancelable;
    this.defaultPrevented = false;
    this.timeStamp = Date.now();
    this.target = null;
    this.currentTarget = null;
  }
  get type() {
    return this.#type;
  }
  preventDefault() {
    if (this.cancelable) this.defaultPrevented = true;
  }
  stopPropagation() {}
  stopImmediatePropagation() {
    this._stop = true;
  }
  get [Symbol.toStringTag]() {
    return "Event";
  }
}

class CustomEvent extends Event {
  #detail;
  constructor(type, init = {}) {
    if (arguments.length === 0) throw new TypeErrorCtor("1 argument required");
    super(type, init);
    this.#detail = init.detail ?? null;
  }
  get detail() {
    return this.#detail;
  }
  get [Symbol.toStringTag]() {
    return "CustomEvent";
  }
}

class EventTarget {
  #listeners = new SafeMap();
  get [Symbol.toStringTag]() {
    return "EventTarget";
  }
  addEventListener(type, listener, options) {
    if (listener === null || listener === undefined) return;
    const once = typeof options === "object" && options !== null && !!options.once;
    let list = this.#listeners.get(type);
    if (list === undefined) this.#listeners.set(type, list = []);
    for (let i = 0; i < list.length; i++) if (list[i].listener === listener) return;
    ArrayPrototypePush(list, { listener, once });
    if (options && options.signal) options.signal.addEventListener("abort", () => this.removeEventListener(type, listener));
  }
  removeEventListener(type, listener) {
    const list = this.#listeners.get(type);
    if (list === undefined) return;
    for (let i = 0; i < list.length; i++) {
      if (list[i].listener === listener) {
        ArrayPrototypeSplice(list, i, 1);
        return;
      }
    }
  }
  dispatchEvent(event) {
    const list = this.#listeners.get(event.type);
    event.target = event.currentTarget = this;
    const handler = this["on" + event.type];
    if (typeof handler === "function") handler.call(this, event);
    if (list !== undefined) {
      for (const { listener, once } of ArrayPrototypeSlice(list)) {
        if (once) this.removeEventListener(event.type, listener);
        if (typeof listener === "function") listener.call(this, event);
        else if (listener && typeof listener.handleEvent === "function") listener.handleEvent(event);
        if (event._stop) break;
      }
    }
    return !event.defaultPrevented;
  }
}

function abortError(message = "This operation was aborted") {
  return new DOMException(message, "AbortError");
}

class AbortSignal extends EventTarget {
  get [Symbol.toStringTag]() {
    return "AbortSignal";
  }
  aborted = false;
  reason = undefined;
  onabort = null;
  throwIfAborted() {
    if (this.aborted) throw this.reason;
  }
  static abort(reason) {
    const c = new AbortController();
    c.abort(reason);
    return c.signal;
  }
  static timeout(ms) {
    const c = new AbortController();
    setTimeout(() => c.abort(new DOMException("The operation was aborted due to timeout", "TimeoutError")), ms);
    return c.signal;
  }
  static any(signals) {
    const c = new AbortController();
    const list = [...signals];
    for (let i = 0; i < list.length; i++) {
      if (list[i].aborted) {
        c.abort(list[i].reason);
        return c.signal;
      }
    }
    for (let i = 0; i < list.length; i++) {
      const s = list[i];
      s.addEventListener("abort", () => c.abort(s.reason), { once: true });
    }
    return c.signal;
  }
}

class AbortController {
  #signal = new AbortSignal();
  get signal() {
    return this.#signal;
  }
  abort(reason) {
    const s = this.#signal;
    if (s.aborted) return;
    s.aborted = true;
    s.reason = reason === undefined ? abortError() : reason;
    s.dispatchEvent(new Event("abort"));
  }
}

// ---------------------------------------------------------------------------
// Promise helpers: internal promises never reach the unhandled-rejection
// handler (which would fail the request) unless a guest drops one it got.
// ---------------------------------------------------------------------------

function deferred() {
  let resolve;
  let reject;
  const promise = new PromiseCtor((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function handled(promise) {
  PromisePrototypeThen(promise, undefined, () => {});
  return promise;
}

function settledCall(fn, thisArg, args) {
  try {
    return PromiseResolve(ReflectApply(fn, thisArg, args));
  } catch (e) {
    return PromiseReject(e);
  }
}

// ---------------------------------------------------------------------------
// ReadableStream: default (and byte-typed) sources, default readers, async
// iteration, tee and from. What fetch bodies and Blob.stream() are.
// ---------------------------------------------------------------------------

const INTERNAL = Symbol("internal");
let streamState;

function newReaderRecord() {
  const closed = deferred();
  handled(closed.promise);
  return { requests: [], closed };
}

function finishClose(s) {
  s.state = "closed";
  const reader = s.reader;
  if (reader === null) return;
  const requests = reader.requests;
  reader.requests = [];
  for (let i = 0; i < requests.length; i++) requests[i].resolve({ value: undefined, done: true });
  reader.closed.resolve(undefined);
}

function errorStream(s, e) {
  if (s.state !== "readable") return;
  s.state = "errored";
  s.error = e;
  s.queue = [];
  s.queueTotal = 0;
  const reader = s.reader;
  if (reader === null) return;
  const requests = reader.requests;
  reader.requests = [];
  for (let i = 0; i < requests.length; i++) requests[i].reject(e);
  reader.closed.reject(e);
}

function pullIfNeeded(s) {
  if (!s.started || s.state !== "readable" || s.closeRequested || s.pull === null) return;
  const wanted = (s.reader !== null && s.reader.requests.length > 0) || s.hwm - s.queueTotal > 0;
  if (!wanted) return;
  if (s.pulling) {
    s.pullAgain = true;
    return;
  }
  s.pulling = true;
  PromisePrototypeThen(
    settledCall(s.pull, s.source, [s.controller]),
    () => {
      s.pulling = false;
      if (s.pullAgain) {
        s.pullAgain = false;
        pullIfNeeded(s);
      }
    },
    (e) => errorStream(s, e),
  );
}

function enqueueChunk(s, chunk) {
  if (s.reader !== null && s.reader.requests.length > 0) {
    ArrayPrototypeShift(s.reader.requests).resolve({ value: chunk, done: false });
  } else {
    let size = 1;
    if (s.size !== null) {
      try {
        size = NumberCtor(ReflectApply(s.size, undefined, [chunk]));
      } catch (e) {
        errorStream(s, e);
        throw e;
      }
      if (!(size >= 0) || size === Infinity) {
        const e = new RangeError("The return value of the queuing strategy's size function is invalid");
        errorStream(s, e);
        throw e;
      }
    }
    ArrayPrototypePush(s.queue, { value: chunk, size });
    s.queueTotal += size;
  }
  pullIfNeeded(s);
}

function readFrom(s) {
  s.disturbed = true;
  if (s.state === "closed") return PromiseResolve({ value: undefined, done: true });
  if (s.state === "errored") return PromiseReject(s.error);
  if (s.queue.length > 0) {
    const { value, size } = ArrayPrototypeShift(s.queue);
    s.queueTotal -= size;
    if (s.closeRequested && s.queue.length === 0) finishClose(s);
    else pullIfNeeded(s);
    return PromiseResolve({ value, done: false });
  }
  const request = deferred();
  ArrayPrototypePush(s.reader.requests, request);
  pullIfNeeded(s);
  return request.promise;
}

function cancelStream(s, reason) {
  s.disturbed = true;
  if (s.state === "closed") return PromiseResolve(undefined);
  if (s.state === "errored") return PromiseReject(s.error);
  s.queue = [];
  s.queueTotal = 0;
  finishClose(s);
  if (s.cancel === null) return PromiseResolve(undefined);
  return PromisePrototypeThen(settledCall(s.cancel, s.source, [reason]), () => undefined);
}

class ReadableStreamDefaultController {
  #s;
  constructor(token, s) {
    if (token !== INTERNAL) throw new TypeErrorCtor("Illegal constructor");
    this.#s = s;
  }
  get desiredSize() {
    const s = this.#s;
    if (s.state === "errored") return null;
    if (s.state === "closed") return 0;
    return s.hwm - s.queueTotal;
  }
  get byobRequest() {
    return null;
  }
  enqueue(chunk) {
    const s = this.#s;
    if (s.closeRequested || s.state !== "readable") {
      const err = new TypeErrorCtor("Invalid state: Controller is already closed");
      err.code = "ERR_INVALID_STATE";
      throw err;
    }
    enqueueChunk(s, chunk);
  }
  close() {
    const s = this.#s;
    if (s.closeRequested || s.state !== "readable") {
      const err = new TypeErrorCtor("Invalid state: Controller is already closed");
      err.code = "ERR_INVALID_STATE";
      throw err;
    }
    s.closeRequested = true;
    if (s.queue.length === 0) finishClose(s);
  }
  error(e) {
    errorStream(this.#s, e);
  }
}

class ReadableStreamDefaultReader {
  #s;
  #record;
  constructor(stream) {
    const s = streamState(stream);
    if (s === undefined) throw new TypeErrorCtor("The argument must be a ReadableStream");
    if (s.reader !== null) {
      const err = new TypeErrorCtor("ReadableStream is locked");
      err.code = "ERR_INVALID_STATE";
      throw err;
    }
    this.#s = s;
    this.#record = s.reader = newReaderRecord();
    if (s.state === "closed") this.#record.closed.resolve(undefined);
    else if (s.state === "errored") this.#record.closed.reject(s.error);
  }
  get closed() {
    return this.#record.closed.promise;
  }
  read() {
    if (this.#s === null) return PromiseReject(new TypeErrorCtor("The reader was released"));
    return readFrom(this.#s);
  }
  releaseLock() {
    const s = this.#s;
    if (s === null) return;
    const record = this.#record;
    const released = new TypeErrorCtor("The reader was released");
    const requests = record.requests;
    record.requests = [];
    for (let i = 0; i < requests.length; i++) requests[i].reject(released);
    if (s.state === "readable") record.closed.reject(released);
    else {
      record.closed = deferred();
      handled(record.closed.promise);
      record.closed.reject(released);
    }
    s.reader = null;
    this.#s = null;
  }
  cancel(reason) {
    if (this.#s === null) return PromiseReject(new TypeErrorCtor("The reader was released"));
    return cancelStream(this.#s, reason);
  }
  get [Symbol.toStringTag]() {
    return "ReadableStreamDefaultReader";
  }
}

const AsyncIteratorPrototype = ObjectGetPrototypeOf(ObjectGetPrototypeOf(async function* () {}).prototype);

class ReadableStream {
  #s;
  static {
    streamState = (stream) => (stream !== null && typeof stream === "object" && #s in stream ? stream.#s : undefined);
  }
  constructor(source = undefined, strategy = undefined) {
    const src = source === undefined || source === null ? {} : source;
    const type = src.type;
    if (type !== undefined && StringCtor(type) !== "bytes") {
      throw new TypeErrorCtor(`The argument 'source.type' is invalid. Received '${StringCtor(type)}'`);
    }
    const hwmIn = strategy?.highWaterMark;
    const hwm = hwmIn === undefined ? (type === "bytes" ? 0 : 1) : NumberCtor(hwmIn);
    if (!(hwm >= 0)) throw new RangeError(`The argument 'highWaterMark' is invalid. Received ${StringCtor(hwmIn)}`);
    const size = strategy?.size;
    const pull = src.pull;
    const cancel = src.cancel;
    const s = {
      state: "readable",
      queue: [],
      queueTotal: 0,
      reader: null,
      error: undefined,
      disturbed: false,
      closeRequested: false,
      started: false,
      pulling: false,
      pullAgain: false,
      hwm,
      size: typeof size === "function" ? size : null,
      source: src,
      pull: typeof pull === "function" ? pull : null,
      cancel: typeof cancel === "function" ? cancel : null,
      controller: null,
    };
    this.#s = s;
    s.controller = new ReadableStreamDefaultController(INTERNAL, s);
    const start = src.start;
    const started = typeof start === "function" ? ReflectApply(start, src, [s.controller]) : undefined;
    PromisePrototypeThen(
      PromiseResolve(started),
      () => {
        s.started = true;
        pullIfNeeded(s);
      },
      (e) => errorStream(s, e),
    );
  }
  get locked() {
    return this.#s.reader !== null;
  }
  cancel(reason) {
    if (this.#s.reader !== null) return PromiseReject(new TypeErrorCtor("Cannot cancel a locked ReadableStream"));
    return cancelStream(this.#s, reason);
  }
  getReader(options = undefined) {
    if (options?.mode !== undefined) {
      if (StringCtor(options.mode) !== "byob") throw new TypeErrorCtor(`Invalid reader mode: ${StringCtor(options.mode)}`);
      throw new TypeErrorCtor("webtask's ReadableStream has no BYOB readers; use getReader()");
    }
    return new ReadableStreamDefaultReader(this);
  }
  values(options = undefined) {
    const reader = this.getReader();
    const preventCancel = !!options?.preventCancel;
    const iterator = ObjectCreate(AsyncIteratorPrototype);
    iterator.next = () =>
      PromisePrototypeThen(
        reader.read(),
        (r) => {
          if (r.done) reader.releaseLock();
          return r;
        },
        (e) => {
          reader.releaseLock();
          throw e;
        },
      );
    iterator.return = (value) => {
      const done = () => {
        reader.releaseLock();
        return { value, done: true };
      };
      return preventCancel ? PromiseResolve(done()) : PromisePrototypeThen(reader.cancel(value), done);
    };
    return iterator;
  }
  [Symbol.asyncIterator](options = undefined) {
    return this.values(options);
  }
  tee() {
    const reader = this.getReader();
    let reading = null;
    const canceled = [false, false];
    const reasons = [undefined, undefined];
    const controllers = [null, null];
    const cancelled = deferred();
    const each = (fn) => {
      for (let i = 0; i < 2; i++) {
        if (!canceled[i]) {
          try {
            fn(controllers[i]);
          } catch {
            // That branch was closed or errored already.
          }
        }
      }
    };
    PromisePrototypeThen(reader.closed, undefined, (e) => {
      each((c) => c.error(e));
      cancelled.resolve(undefined);
    });
    const pull = () => {
      if (reading !== null) return reading;
      reading = PromisePrototypeThen(reader.read(), ({ value, done }) => {
        reading = null;
        if (done) {
          each((c) => c.close());
          cancelled.resolve(undefined);
        } else {
          each((c) => c.enqueue(value));
        }
      }, () => {
        reading = null;
      });
      return reading;
    };
    const branch = (i) =>
      new ReadableStream({
        start(c) {
          controllers[i] = c;
        },
        pull,
        cancel(reason) {
          canceled[i] = true;
          reasons[i] = reason;
          if (canceled[1 - i]) cancelled.resolve(reader.cancel([reasons[0], reasons[1]]));
          return cancelled.promise;
        },
      });
    return [branch(0), branch(1)];
  }
  pipeThrough(transform, options = undefined) {
    return webStreams().pipeThrough(this, transform, options);
  }
  pipeTo(destination, options = undefined) {
    let streams;
    try {
      streams = webStreams();
    } catch (e) {
      return PromiseReject(e);
    }
    return streams.pipeTo(this, destination, options);
  }
  static from(iterable) {
    const asyncMethod = iterable?.[Symbol.asyncIterator];
    const syncMethod = iterable?.[Symbol.iterator];
    if (typeof asyncMethod !== "function" && typeof syncMethod !== "function") {
      throw new TypeErrorCtor("ReadableStream.from() needs an iterable or async iterable");
    }
    const it = typeof asyncMethod === "function" ? ReflectApply(asyncMethod, iterable, []) : ReflectApply(syncMethod, iterable, []);
    return new ReadableStream({
      pull(c) {
        return PromisePrototypeThen(PromiseResolve(it.next()), (r) => PromisePrototypeThen(PromiseResolve(r.value), (value) => {
          if (r.done) c.close();
          else c.enqueue(value);
        }));
      },
      cancel(reason) {
        return typeof it.return === "function" ? PromisePrototypeThen(PromiseResolve(it.return(reason)), () => undefined) : undefined;
      },
    }, { highWaterMark: 0 });
  }
  get [Symbol.toStringTag]() {
    return "ReadableStream";
  }
}

let streams;

/// WritableStream, TransformStream and the rest of streams.js, compiled on
/// an isolate's first use of any of them.
export function webStreams() {
  streams ??= op_wt_load_streams()({
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
  });
  return streams;
}

/// The globals that come from streams.js.
// CompressionStream and DecompressionStream: a TransformStream over the
// zlib ops, one codec per stream. Chunks are bytes or, as Node takes them,
// strings (as UTF-8).
const CODEC_MODES = { __proto__: null, gzip: ["gzip", "gunzip"], deflate: ["deflate", "inflate"], "deflate-raw": ["deflateRaw", "inflateRaw"] };

function codecStream(format, compress) {
  const modes = typeof format === "string" ? CODEC_MODES[format] : undefined;
  if (modes === undefined) {
    const shown = typeof format === "string" ? `'${format}'` : StringCtor(format);
    const err = new TypeErrorCtor(`The argument 'format' is invalid. Received ${shown}`);
    err.code = "ERR_INVALID_ARG_VALUE";
    throw err;
  }
  const codec = webCodec(modes[compress ? 0 : 1]);
  return new (webStreams().TransformStream)({
    transform(chunk, controller) {
      for (const out of new SafeArrayIterator(codec.push(codecInput(chunk)))) controller.enqueue(out);
    },
    flush(controller) {
      for (const out of new SafeArrayIterator(codec.finish())) controller.enqueue(out);
    },
  });
}

function codecInput(chunk) {
  if (typeof chunk === "string") return encode(chunk);
  if (ArrayBufferIsView(chunk)) return new Uint8ArrayCtor(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (chunk instanceof ArrayBufferCtor) return new Uint8ArrayCtor(chunk);
  const err = new TypeErrorCtor('The "chunk" argument must be of type string or an instance of Buffer, TypedArray, DataView, or ArrayBuffer.');
  err.code = "ERR_INVALID_ARG_TYPE";
  throw err;
}

function codecClass(name, compress) {
  const Class = class {
    #stream;
    constructor(format) {
      this.#stream = codecStream(format, compress);
    }
    get readable() {
      return this.#stream.readable;
    }
    get writable() {
      return this.#stream.writable;
    }
    get [Symbol.toStringTag]() {
      return name;
    }
  };
  ObjectDefineProperty(Class, "name", { __proto__: null, value: name });
  return Class;
}

const CompressionStream = codecClass("CompressionStream", true);
const DecompressionStream = codecClass("DecompressionStream", false);

const MESSAGING_GLOBALS = ["MessageChannel", "MessagePort", "MessageEvent", "BroadcastChannel"];

const STREAM_GLOBALS = [
  "WritableStream",
  "WritableStreamDefaultWriter",
  "WritableStreamDefaultController",
  "TransformStream",
  "TransformStreamDefaultController",
  "TextEncoderStream",
  "TextDecoderStream",
  "CountQueuingStrategy",
  "ByteLengthQueuingStrategy",
];

/// A stream of `bytes`, already complete.
function streamOfBytes(bytes) {
  return new ReadableStream({
    start(c) {
      if (bytes.length > 0) c.enqueue(bytes);
      c.close();
    },
  });
}

/// Every chunk of `stream` (Uint8Arrays), concatenated.
function readAll(stream) {
  const reader = stream.getReader();
  const chunks = [];
  let total = 0;
  const next = () =>
    PromisePrototypeThen(reader.read(), ({ value, done }) => {
      if (done) return concat(chunks, total);
      if (!ArrayBufferIsView(value)) {
        const err = new TypeErrorCtor("Received non-Uint8Array chunk");
        reader.cancel(err);
        throw err;
      }
      const bytes = new Uint8ArrayCtor(value.buffer, value.byteOffset, value.byteLength);
      ArrayPrototypePush(chunks, bytes);
      total += bytes.length;
      return next();
    });
  return next();
}

function concat(chunks, total) {
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8ArrayCtor(total);
  let at = 0;
  for (let i = 0; i < chunks.length; i++) {
    TypedArrayPrototypeSet(out, chunks[i], at);
    at += chunks[i].length;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Blob, File, FormData.
// ---------------------------------------------------------------------------

let blobBytes;

class Blob {
  #bytes;
  #type;
  static {
    blobBytes = (blob) => (blob !== null && typeof blob === "object" && #bytes in blob ? blob.#bytes : undefined);
  }
  constructor(parts = [], options = undefined) {
    if (parts === null || typeof parts !== "object" || typeof parts[Symbol.iterator] !== "function") {
      throw new TypeErrorCtor("The \"sources\" argument must be a sequence.");
    }
    const chunks = [];
    let total = 0;
    for (const part of parts) {
      let bytes;
      const inner = blobBytes(part);
      if (inner !== undefined) bytes = inner;
      else if (ArrayBufferIsView(part)) bytes = TypedArrayPrototypeSlice(new Uint8ArrayCtor(part.buffer, part.byteOffset, part.byteLength));
      else if (part instanceof ArrayBufferCtor) bytes = TypedArrayPrototypeSlice(new Uint8ArrayCtor(part));
      else bytes = encode(StringCtor(part));
      ArrayPrototypePush(chunks, bytes);
      total += bytes.length;
    }
    this.#bytes = concat(chunks, total);
    const type = options?.type === undefined ? "" : StringCtor(options.type);
    this.#type = /^[\x20-\x7e]*$/.test(type) ? StringPrototypeToLowerCase(type) : "";
  }
  get size() {
    return this.#bytes.length;
  }
  get type() {
    return this.#type;
  }
  slice(start = 0, end = undefined, contentType = "") {
    const size = this.#bytes.length;
    const clamp = (n) => (n < 0 ? MathMax(size + n, 0) : MathMin(n, size));
    const from = clamp(NumberCtor(start) || 0);
    const to = end === undefined ? size : clamp(NumberCtor(end) || 0);
    const blob = new Blob([], { type: contentType });
    blob.#bytes = TypedArrayPrototypeSlice(this.#bytes, from, MathMax(to, from));
    return blob;
  }
  text() {
    return PromiseResolve(decode(this.#bytes));
  }
  arrayBuffer() {
    const b = this.#bytes;
    return PromiseResolve(ArrayBufferPrototypeSlice(b.buffer, b.byteOffset, b.byteOffset + b.byteLength));
  }
  bytes() {
    return PromiseResolve(TypedArrayPrototypeSlice(this.#bytes));
  }
  stream() {
    return streamOfBytes(TypedArrayPrototypeSlice(this.#bytes));
  }
  get [Symbol.toStringTag]() {
    return "Blob";
  }
}

class File extends Blob {
  #name;
  #lastModified;
  constructor(parts, name, options = undefined) {
    if (arguments.length < 2) throw new TypeErrorCtor("The \"fileName\" argument must be specified");
    super(parts, options);
    this.#name = StringCtor(name);
    this.#lastModified = options?.lastModified === undefined ? Date.now() : NumberCtor(options.lastModified);
  }
  get name() {
    return this.#name;
  }
  get lastModified() {
    return this.#lastModified;
  }
  get [Symbol.toStringTag]() {
    return "File";
  }
}

function formValue(value, filename) {
  if (blobBytes(value) === undefined) return StringCtor(value);
  if (value instanceof File && filename === undefined) return value;
  const name = filename === undefined ? (value instanceof File ? value.name : "blob") : StringCtor(filename);
  return new File([value], name, { type: value.type, lastModified: value instanceof File ? value.lastModified : undefined });
}

class FormData {
  #entries = [];
  constructor(form = undefined) {
    if (form !== undefined) throw new TypeErrorCtor("FormData takes no form element in webtask");
  }
  append(name, value, filename = undefined) {
    ArrayPrototypePush(this.#entries, [StringCtor(name), formValue(value, filename)]);
  }
  set(name, value, filename = undefined) {
    const key = StringCtor(name);
    const entry = [key, formValue(value, filename)];
    const at = ArrayPrototypeFindIndex(this.#entries, (e) => e[0] === key);
    if (at < 0) {
      ArrayPrototypePush(this.#entries, entry);
      return;
    }
    this.#entries[at] = entry;
    this.#entries = ArrayPrototypeFilter(this.#entries, (e, i) => i <= at || e[0] !== key);
  }
  get(name) {
    const key = StringCtor(name);
    const entry = ArrayPrototypeFind(this.#entries, (e) => e[0] === key);
    return entry === undefined ? null : entry[1];
  }
  getAll(name) {
    const key = StringCtor(name);
    return ArrayPrototypeMap(ArrayPrototypeFilter(this.#entries, (e) => e[0] === key), (e) => e[1]);
  }
  has(name) {
    const key = StringCtor(name);
    return ArrayPrototypeFindIndex(this.#entries, (e) => e[0] === key) >= 0;
  }
  delete(name) {
    const key = StringCtor(name);
    this.#entries = ArrayPrototypeFilter(this.#entries, (e) => e[0] !== key);
  }
  forEach(fn, thisArg = undefined) {
    for (const [k, v] of this.entries()) ReflectApply(fn, thisArg, [v, k, this]);
  }
  *entries() {
    const list = ArrayPrototypeSlice(this.#entries);
    for (let i = 0; i < list.length; i++) yield [list[i][0], list[i][1]];
  }
  *keys() {
    for (const [k] of this.entries()) yield k;
  }
  *values() {
    for (const [, v] of this.entries()) yield v;
  }
  [Symbol.iterator]() {
    return this.entries();
  }
  get [Symbol.toStringTag]() {
    return "FormData";
  }
}

const escapeName = (s) => StringPrototypeReplace(StringPrototypeReplace(StringPrototypeReplace(s, /\n/g, "%0A"), /\r/g, "%0D"), /"/g, "%22");
const crlf = (s) => StringPrototypeReplace(s, /\r?\n|\r/g, "\r\n");

/// multipart/form-data (RFC 7578), as undici writes it.
function encodeForm(form) {
  const random = getRandomValues(new Uint8ArrayCtor(8));
  let boundary = "----formdata-webtask-";
  for (let i = 0; i < random.length; i++) boundary += StringPrototypePadStart(NumberPrototypeToString(random[i], 16), 2, "0");
  const chunks = [];
  let total = 0;
  const add = (bytes) => {
    ArrayPrototypePush(chunks, bytes);
    total += bytes.length;
  };
  for (const [name, value] of form.entries()) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${escapeName(crlf(name))}"`;
    if (typeof value === "string") {
      add(encode(`${head}\r\n\r\n${crlf(value)}\r\n`));
    } else {
      head += `; filename="${escapeName(value.name)}"\r\nContent-Type: ${value.type || "application/octet-stream"}\r\n\r\n`;
      add(encode(head));
      add(blobBytes(value));
      add(encode("\r\n"));
    }
  }
  add(encode(`--${boundary}--\r\n`));
  return { bytes: concat(chunks, total), type: `multipart/form-data; boundary=${boundary}` };
}

/// A multipart/form-data or urlencoded body as FormData.
function decodeForm(bytes, contentType) {
  const form = new FormData();
  const type = StringPrototypeToLowerCase(contentType ?? "");
  if (StringPrototypeStartsWith(type, "application/x-www-form-urlencoded")) {
    const params = new (URLSearchParamsCtor())(decode(bytes));
    for (const [k, v] of params) form.append(k, v);
    return form;
  }
  const m = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(contentType ?? "");
  if (!StringPrototypeStartsWith(type, "multipart/form-data") || m === null) {
    throw new TypeErrorCtor("Response body is not multipart/form-data or application/x-www-form-urlencoded");
  }
  // Binary-safe: each byte one UTF-16 unit, decoded part by part.
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += StringFromCharCode(...new SafeArrayIterator(TypedArrayPrototypeSubarray(bytes, i, i + 8192)));
  }
  const delimiter = "--" + (m[1] ?? StringPrototypeTrim(m[2]));
  const parts = StringPrototypeSplit(text, delimiter);
  for (let i = 1; i < parts.length; i++) {
    let part = parts[i];
    if (StringPrototypeStartsWith(part, "--")) break;
    part = StringPrototypeSlice(part, StringPrototypeStartsWith(part, "\r\n") ? 2 : 0);
    const end = StringPrototypeIndexOf(part, "\r\n\r\n");
    if (end < 0) throw new TypeErrorCtor("Malformed multipart/form-data body");
    const headers = StringPrototypeSlice(part, 0, end);
    let body = StringPrototypeSlice(part, end + 4);
    if (StringPrototypeEndsWith(body, "\r\n")) body = StringPrototypeSlice(body, 0, -2);
    const name = /name="([^"]*)"/i.exec(headers);
    if (name === null) throw new TypeErrorCtor("Malformed multipart/form-data body: a part has no name");
    const filename = /filename="([^"]*)"/i.exec(headers);
    const ctype = /content-type:\s*([^\r\n]+)/i.exec(headers);
    const raw = new Uint8ArrayCtor(body.length);
    for (let k = 0; k < body.length; k++) raw[k] = StringPrototypeCharCodeAt(body, k);
    const key = decode(latin1(name[1]));
    if (filename === null) form.append(key, decode(raw));
    else form.append(key, new File([raw], decode(latin1(filename[1])), { type: ctype === null ? "" : ctype[1] }));
  }
  return form;
}

function latin1(s) {
  const out = new Uint8ArrayCtor(s.length);
  for (let i = 0; i < s.length; i++) out[i] = StringPrototypeCharCodeAt(s, i);
  return out;
}

// ---------------------------------------------------------------------------
// Fetch types.
// ---------------------------------------------------------------------------

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function headerName(name) {
  const k = StringCtor(name);
  if (!RegExpPrototypeTest(TOKEN, k)) {
    const err = new TypeErrorCtor(`Header name must be a valid HTTP token ["${k}"]`);
    err.code = "ERR_INVALID_HTTP_TOKEN";
    throw err;
  }
  return StringPrototypeToLowerCase(k);
}

function headerValue(value, name) {
  const v = StringPrototypeTrim(StringCtor(value));
  if (/[\0\r\n]/.test(v)) {
    const err = new TypeErrorCtor(`Invalid character in header content ["${name}"]`);
    err.code = "ERR_INVALID_CHAR";
    throw err;
  }
  return v;
}

class Headers {
  // Lower-case name -> its values in order (set-cookie kept apart).
  #map = new SafeMap();
  get [Symbol.toStringTag]() {
    return "Headers";
  }
  constructor(init = undefined) {
    if (init === undefined || init === null) return;
    if (init instanceof Headers) {
      for (const [k, values] of new SafeMapIterator(init.#map)) this.#map.set(k, ArrayPrototypeSlice(values));
    } else if (typeof init === "object" && typeof init[Symbol.iterator] === "function") {
      for (const pair of init) {
        const list = [...pair];
        if (list.length !== 2) throw new TypeErrorCtor("Header pairs must contain exactly two items");
        this.append(list[0], list[1]);
      }
    } else if (typeof init === "object") {
      const keys = ObjectKeys(init);
      for (let i = 0; i < keys.length; i++) this.append(keys[i], init[keys[i]]);
    } else {
      throw new TypeErrorCtor("Headers must be an object, an iterable of pairs or a Headers");
    }
  }
  append(name, value) {
    const k = headerName(name);
    const v = headerValue(value, k);
    const prev = this.#map.get(k);
    if (prev === undefined) this.#map.set(k, [v]);
    else ArrayPrototypePush(prev, v);
  }
  set(name, value) {
    const k = headerName(name);
    this.#map.set(k, [headerValue(value, k)]);
  }
  get(name) {
    const values = this.#map.get(headerName(name));
    return values === undefined ? null : ArrayPrototypeJoin(values, ", ");
  }
  getSetCookie() {
    const values = this.#map.get("set-cookie");
    return values === undefined ? [] : ArrayPrototypeSlice(values);
  }
  has(name) {
    return this.#map.has(headerName(name));
  }
  delete(name) {
    this.#map.delete(headerName(name));
  }
  forEach(fn, thisArg) {
    for (const [k, v] of this.entries()) fn.call(thisArg, v, k, this);
  }
  *entries() {
    const keys = ArrayPrototypeSort([...new SafeMapIterator(this.#map)].map((e) => e[0]));
    for (let i = 0; i < keys.length; i++) {
      const values = this.#map.get(keys[i]);
      if (values === undefined) continue;
      if (keys[i] === "set-cookie") for (let j = 0; j < values.length; j++) yield [keys[i], values[j]];
      else yield [keys[i], ArrayPrototypeJoin(values, ", ")];
    }
  }
  *keys() {
    for (const [k] of this.entries()) yield k;
  }
  *values() {
    for (const [, v] of this.entries()) yield v;
  }
  [Symbol.iterator]() {
    return this.entries();
  }
}

// [name, value] pairs of a Headers, every value on its own (for the wire).
function headerList(headers) {
  const out = [];
  headers.forEach((v, k) => ArrayPrototypePush(out, [k, v]));
  return out;
}

/// A body init as bytes (or a stream) and the content type it implies.
function extractBody(body) {
  if (body === undefined || body === null) return null;
  if (typeof body === "string") return { bytes: encode(body), stream: null, type: "text/plain;charset=UTF-8" };
  if (streamState(body) !== undefined) return { bytes: null, stream: body, type: null };
  const blob = blobBytes(body);
  if (blob !== undefined) return { bytes: blob, stream: null, type: body.type === "" ? null : body.type };
  if (ArrayBufferIsView(body)) {
    return { bytes: TypedArrayPrototypeSlice(new Uint8ArrayCtor(body.buffer, body.byteOffset, body.byteLength)), stream: null, type: null };
  }
  if (body instanceof ArrayBufferCtor) return { bytes: TypedArrayPrototypeSlice(new Uint8ArrayCtor(body)), stream: null, type: null };
  if (body instanceof URLSearchParamsCtor()) {
    return { bytes: encode(body.toString()), stream: null, type: "application/x-www-form-urlencoded;charset=UTF-8" };
  }
  if (body instanceof FormData) {
    const { bytes, type } = encodeForm(body);
    return { bytes, stream: null, type };
  }
  if (typeof body === "object" && typeof body[Symbol.asyncIterator] === "function") {
    return { bytes: null, stream: ReadableStream.from(body), type: null };
  }
  return { bytes: encode(StringCtor(body)), stream: null, type: "text/plain;charset=UTF-8" };
}

let bodyState;

class Body {
  // { bytes, stream } (either may be null until needed) or null: no body.
  #body;
  #used = false;
  static {
    bodyState = (b) => b.#body;
  }
  constructor(extracted) {
    this.#body = extracted === null ? null : { bytes: extracted.bytes, stream: extracted.stream };
  }
  get body() {
    const b = this.#body;
    if (b === null) return null;
    if (b.stream === null) b.stream = streamOfBytes(this.#used ? new Uint8ArrayCtor(0) : b.bytes);
    return b.stream;
  }
  get bodyUsed() {
    const b = this.#body;
    if (b === null) return false;
    return this.#used || (b.stream !== null && streamState(b.stream).disturbed);
  }
  #consume() {
    const b = this.#body;
    if (this.bodyUsed) return PromiseReject(new TypeErrorCtor("Body is unusable: Body has already been read"));
    if (b === null) return PromiseResolve(new Uint8ArrayCtor(0));
    if (b.stream === null) {
      this.#used = true;
      return PromiseResolve(b.bytes);
    }
    if (b.stream.locked) return PromiseReject(new TypeErrorCtor("Body is unusable: ReadableStream is locked"));
    return readAll(b.stream);
  }
  arrayBuffer() {
    return PromisePrototypeThen(this.#consume(), (b) => ArrayBufferPrototypeSlice(b.buffer, b.byteOffset, b.byteOffset + b.byteLength));
  }
  bytes() {
    return PromisePrototypeThen(this.#consume(), (b) => TypedArrayPrototypeSlice(b));
  }
  text() {
    return PromisePrototypeThen(this.#consume(), (b) => decode(b));
  }
  json() {
    return PromisePrototypeThen(this.#consume(), (b) => JSONParse(decode(b)));
  }
  blob() {
    return PromisePrototypeThen(this.#consume(), (b) => new Blob([b], { type: this.headers.get("content-type") ?? "" }));
  }
  formData() {
    return PromisePrototypeThen(this.#consume(), (b) => decodeForm(b, this.headers.get("content-type")));
  }
}

/// The body of `from` for a copy: bytes shared, a stream teed (the
/// original keeps one branch).
function cloneBody(from) {
  const b = bodyState(from);
  if (b === null) return null;
  if (from.bodyUsed) throw new TypeErrorCtor("Body has already been consumed.");
  if (b.stream === null) return { bytes: b.bytes, stream: null, type: null };
  const [one, two] = b.stream.tee();
  b.stream = one;
  return { bytes: null, stream: two, type: null };
}

const FORBIDDEN_METHODS = ["CONNECT", "TRACE", "TRACK"];
const NORMALIZED_METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];

function normalizeMethod(method) {
  const m = StringCtor(method);
  if (!RegExpPrototypeTest(TOKEN, m)) throw new TypeErrorCtor(`'${m}' is not a valid HTTP method.`);
  const upper = StringPrototypeToUpperCase(m);
  if (ArrayPrototypeIncludes(FORBIDDEN_METHODS, upper)) throw new TypeErrorCtor(`'${m}' HTTP method is unsupported.`);
  return ArrayPrototypeIncludes(NORMALIZED_METHODS, upper) ? upper : m;
}

const REDIRECT_MODES = ["follow", "error", "manual"];

class Request extends Body {
  #signal;
  constructor(input, init = {}) {
    if (arguments.length === 0) throw new TypeErrorCtor("1 argument required, but only 0 present.");
    init = init ?? {};
    const from = input instanceof Request ? input : null;
    let url;
    if (from !== null) url = from.url;
    else {
      let parsed;
      try {
        parsed = new (URLCtor())(StringCtor(input));
      } catch (cause) {
        throw new TypeErrorCtor(`Failed to parse URL from ${StringCtor(input)}`, { cause });
      }
      if (parsed.username !== "" || parsed.password !== "") {
        throw new TypeErrorCtor(`Request cannot be constructed from a URL that includes credentials: ${StringCtor(input)}`);
      }
      url = parsed.href;
    }
    const method = init.method !== undefined ? normalizeMethod(init.method) : from !== null ? from.method : "GET";
    const hasBody = init.body !== undefined && init.body !== null;
    if ((hasBody || (init.body === undefined && from !== null && bodyState(from) !== null)) && (method === "GET" || method === "HEAD")) {
      throw new TypeErrorCtor("Request with GET/HEAD method cannot have body.");
    }
    const extracted = init.body !== undefined ? extractBody(init.body) : from !== null ? cloneBody(from) : null;
    if (extracted !== null && extracted.stream !== null && init.body !== undefined && init.duplex !== "half") {
      throw new TypeErrorCtor("RequestInit: duplex option is required when sending a body.");
    }
    super(extracted);
    this.url = url;
    this.method = method;
    this.headers = new Headers(init.headers ?? (from !== null ? from.headers : undefined));
    if (extracted !== null && extracted.type !== null && !this.headers.has("content-type")) {
      this.headers.set("content-type", extracted.type);
    }
    const redirect = init.redirect !== undefined ? StringCtor(init.redirect) : from !== null ? from.redirect : "follow";
    if (!ArrayPrototypeIncludes(REDIRECT_MODES, redirect)) {
      throw new TypeErrorCtor(`Failed to construct 'Request': The provided value '${redirect}' is not a valid enum value of type RequestRedirect.`);
    }
    this.redirect = redirect;
    const signal = init.signal !== undefined ? init.signal : from !== null ? from.signal : null;
    if (signal !== null && !(signal instanceof AbortSignal)) {
      throw new TypeErrorCtor("Failed to construct 'Request': member signal is not of type AbortSignal.");
    }
    this.#signal = signal ?? new AbortController().signal;
    this.duplex = "half";
    this.keepalive = !!init.keepalive;
    this.cache = "default";
    this.credentials = "same-origin";
    this.mode = "cors";
    this.referrer = "about:client";
    this.referrerPolicy = "";
    this.integrity = "";
    this.destination = "";
  }
  get signal() {
    return this.#signal;
  }
  clone() {
    return new Request(this);
  }
  get [Symbol.toStringTag]() {
    return "Request";
  }
}

const NULL_BODY_STATUS = [101, 103, 204, 205, 304];
const REDIRECT_STATUS = [301, 302, 303, 307, 308];

class Response extends Body {
  constructor(body = null, init = {}) {
    init = init ?? {};
    if (body === INTERNAL) {
      // A response of fetch: `init` is the host's, trusted.
      super(init.stream === null ? null : { bytes: null, stream: init.stream });
      this.status = init.status;
      this.headers = new Headers(init.headers);
    } else {
      const status = init.status === undefined ? 200 : NumberCtor(init.status);
      if (!(status >= 200 && status <= 599) || status !== MathTrunc(status)) {
        throw new RangeError(`init["status"] must be in the range of 200 to 599, inclusive.`);
      }
      const extracted = extractBody(body);
      if (extracted !== null && ArrayPrototypeIncludes(NULL_BODY_STATUS, status)) {
        throw new TypeErrorCtor("Response constructor: Invalid response status code " + status);
      }
      super(extracted);
      this.status = status;
      this.headers = new Headers(init.headers);
      if (extracted !== null && extracted.type !== null && !this.headers.has("content-type")) {
        this.headers.set("content-type", extracted.type);
      }
    }
    this.statusText = init.statusText !== undefined ? StringCtor(init.statusText) : "";
    this.ok = this.status >= 200 && this.status < 300;
    this.url = init.url ?? "";
    this.redirected = !!init.redirected;
    this.type = body === INTERNAL ? "basic" : "default";
  }
  clone() {
    if (this.bodyUsed) throw new TypeErrorCtor("Response.clone: Body has already been consumed.");
    const copy = cloneBody(this);
    const init = { status: this.status, statusText: this.statusText, headers: this.headers, url: this.url, redirected: this.redirected };
    const r = new Response(INTERNAL, { ...init, stream: copy === null ? null : copy.stream ?? streamOfBytes(copy.bytes) });
    r.type = this.type;
    return r;
  }
  get [Symbol.toStringTag]() {
    return "Response";
  }
  static json(data, init = {}) {
    const headers = new Headers(init?.headers);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
    return new Response(JSONStringify(data), { ...init, headers });
  }
  static error() {
    const r = new Response(null, { status: 200 });
    r.type = "error";
    r.status = 0;
    r.ok = false;
    return r;
  }
  static redirect(url, status = 302) {
    if (!ArrayPrototypeIncludes(REDIRECT_STATUS, status)) throw new RangeError(`Invalid status code ${status}`);
    const location = new (URLCtor())(StringCtor(url)).href;
    return new Response(null, { status, headers: { location } });
  }
}

let whatwg;
function URLCtor() {
  return (whatwg ??= polyfill("whatwg_url")).URL;
}
function URLSearchParamsCtor() {
  return (whatwg ??= polyfill("whatwg_url")).URLSearchParams;
}

// ---------------------------------------------------------------------------
// fetch, through the host's egress (policy, resolution and the connection
// all live outside the isolate; egress.js). The response resolves with its
// head; its body streams as the guest reads it. Redirects are followed
// here, one exchange per hop, so every hop is checked by the egress policy
// and counted against the request's subrequest budget.
// ---------------------------------------------------------------------------

const MAX_REDIRECTS = 20;
// Set by the request body, so the server frames it: never the guest's.
const FRAMING_HEADERS = ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "host"];
const BODY_HEADERS = ["content-encoding", "content-language", "content-location", "content-type", "content-length"];
const CREDENTIAL_HEADERS = ["authorization", "proxy-authorization", "cookie"];

/// A failure of the exchange as a guest TypeError with `.code` (and the
/// Node name of it as `cause.code`, where known).
function fetchError(e) {
  const err = new TypeErrorCtor(e.message);
  err.code = e.code;
  if (e.syscode !== undefined) {
    const cause = new Error(e.message);
    cause.code = e.syscode;
    ObjectDefineProperty(err, "cause", { value: cause, writable: true, configurable: true, enumerable: false });
  }
  return err;
}

function redirectError(message) {
  const err = new TypeErrorCtor(message);
  err.code = "egress_redirect";
  return err;
}

function fetch(input, init = undefined) {
  let request;
  try {
    request = new Request(input, init);
  } catch (e) {
    return PromiseReject(e);
  }
  const signal = request.signal;
  if (signal.aborted) return PromiseReject(signal.reason);
  const b = bodyState(request);
  if (b !== null && b.stream !== null && (streamState(b.stream).disturbed || b.stream.locked)) {
    return PromiseReject(new TypeErrorCtor("Request body has already been read or is locked"));
  }
  const { promise, resolve, reject } = deferred();
  // The exchange in flight, whether the response was handed out, the
  // response body's controller until its end, a failure of the upload.
  const ctx = { rid: 0, settled: false, controller: null, done: false, upload: null };
  const onAbort = () => {
    const reason = signal.reason;
    if (ctx.rid !== 0) abortExchange(ctx.rid);
    ctx.rid = 0;
    if (!ctx.settled) {
      ctx.settled = true;
      reject(reason);
    } else if (ctx.controller !== null && !ctx.done) {
      ctx.done = true;
      ctx.controller.error(reason);
    }
  };
  signal.addEventListener("abort", onAbort);
  ctx.release = () => signal.removeEventListener("abort", onAbort);
  PromisePrototypeThen(
    hops(request, b, ctx),
    (response) => {
      if (ctx.settled) return;
      ctx.settled = true;
      if (response.body === null) ctx.release();
      resolve(response);
    },
    (err) => {
      if (ctx.rid !== 0) abortExchange(ctx.rid);
      ctx.rid = 0;
      ctx.release();
      if (ctx.settled) return;
      ctx.settled = true;
      reject(err);
    },
  );
  return promise;
}

async function hops(request, b, ctx) {
  let url = request.url;
  let method = request.method;
  let headers = headerList(request.headers);
  let body = b === null ? null : b.stream !== null ? { stream: b.stream } : { bytes: b.bytes };
  let redirected = false;
  for (let hop = 0; ; hop++) {
    const wire = ArrayPrototypeFilter(headers, (h) => !ArrayPrototypeIncludes(FRAMING_HEADERS, h[0]));
    if (!ArrayPrototypeSome(wire, (h) => h[0] === "accept")) ArrayPrototypePush(wire, ["accept", "*/*"]);
    let mode = BODY_NONE;
    let bytes;
    if (body !== null && body.stream !== undefined) mode = BODY_STREAM;
    else if (body !== null) {
      mode = BODY_FULL;
      bytes = body.bytes;
      ArrayPrototypePush(wire, ["content-length", StringCtor(bytes.length)]);
    } else if (method === "POST" || method === "PUT") {
      ArrayPrototypePush(wire, ["content-length", "0"]);
    }
    try {
      ctx.rid = startExchange(url, method, wire, mode, bytes);
    } catch (e) {
      throw fetchError(e);
    }
    const rid = ctx.rid;
    if (mode === BODY_STREAM) upload(rid, body.stream, ctx);
    let head;
    try {
      head = await exchangeHead(rid);
    } catch (e) {
      if (ctx.upload !== null) throw ctx.upload;
      throw fetchError(e);
    }
    if (ctx.settled) return null;
    const status = head.status;
    const location = ArrayPrototypeFind(head.headers, (h) => h[0] === "location");
    if (ArrayPrototypeIncludes(REDIRECT_STATUS, status) && request.redirect !== "manual" && location !== undefined) {
      abortExchange(rid);
      ctx.rid = 0;
      if (request.redirect === "error") throw redirectError(`unexpected redirect (${status}) to ${location[1]}`);
      if (hop + 1 > MAX_REDIRECTS) throw redirectError(`redirect count exceeded (${MAX_REDIRECTS})`);
      let next;
      try {
        next = new (URLCtor())(location[1], url);
      } catch {
        throw redirectError(`invalid redirect URL: ${location[1]}`);
      }
      if (next.protocol !== "http:" && next.protocol !== "https:") {
        throw redirectError(`redirect to ${next.protocol} URL: URL scheme must be a HTTP(S) scheme`);
      }
      if (status !== 303 && body !== null && body.stream !== undefined) {
        throw redirectError(`cannot follow a ${status} redirect with a streamed request body`);
      }
      if (((status === 301 || status === 302) && method === "POST") || (status === 303 && method !== "GET" && method !== "HEAD")) {
        method = "GET";
        body = null;
        headers = ArrayPrototypeFilter(headers, (h) => !ArrayPrototypeIncludes(BODY_HEADERS, h[0]));
      }
      if (next.origin !== new (URLCtor())(url).origin) {
        headers = ArrayPrototypeFilter(headers, (h) => !ArrayPrototypeIncludes(CREDENTIAL_HEADERS, h[0]));
      }
      url = next.href;
      redirected = true;
      continue;
    }
    let stream = null;
    if (method === "HEAD" || ArrayPrototypeIncludes(NULL_BODY_STATUS, status)) {
      abortExchange(rid);
      ctx.rid = 0;
    } else {
      stream = responseStream(rid, ctx);
    }
    const statusText = STATUS_TEXT[status] ?? "";
    return new Response(INTERNAL, { status, statusText, headers: head.headers, url, redirected, stream });
  }
}

/// Streams a ReadableStream request body into exchange `rid`; a failure
/// aborts the exchange and becomes the fetch's error.
async function upload(rid, stream, ctx) {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (!ArrayBufferIsView(value) && !(value instanceof ArrayBufferCtor)) {
        throw new TypeErrorCtor("The request body stream yielded a chunk that is not a Uint8Array");
      }
      const chunk = ArrayBufferIsView(value) ? new Uint8ArrayCtor(value.buffer, value.byteOffset, value.byteLength) : new Uint8ArrayCtor(value);
      await exchangeWrite(rid, chunk);
    }
    finishExchange(rid);
  } catch (e) {
    if (ctx.rid !== rid) return;
    // Over the size or ArrayBuffer limit or failed by the guest's own
    // stream: that is the error; an upstream that stopped reading reports
    // through the head.
    if (e !== null && typeof e === "object" && "syscode" in e) {
      if (e.code === "egress_limit" || e.code === "arraybuffer_limit") ctx.upload = fetchError(e);
      else return;
    } else {
      ctx.upload = new TypeErrorCtor("The request body stream failed", { cause: e });
    }
    abortExchange(rid);
    handled(reader.cancel(e));
  }
}

function responseStream(rid, ctx) {
  return new ReadableStream({
    start(c) {
      ctx.controller = c;
    },
    pull(c) {
      return PromisePrototypeThen(exchangeRead(rid), (chunk) => {
        if (ctx.done) return;
        if (chunk.length > 0) return c.enqueue(chunk);
        ctx.done = true;
        ctx.rid = 0;
        ctx.release();
        c.close();
      }, (e) => {
        if (ctx.done) return;
        ctx.done = true;
        // Not the exchange failing (it has a code) but the guest's side,
        // a chunk past the ArrayBuffer limit: the error as it is, and the
        // exchange is given up.
        const own = e?.code === undefined;
        if (own) abortExchange(ctx.rid);
        ctx.rid = 0;
        ctx.release();
        c.error(own ? e : fetchError(e));
      });
    },
    cancel() {
      ctx.done = true;
      if (ctx.rid !== 0) abortExchange(ctx.rid);
      ctx.rid = 0;
      ctx.release();
    },
  }, { highWaterMark: 0 });
}

const STATUS_TEXT = {
  200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
  205: "Reset Content", 206: "Partial Content", 300: "Multiple Choices", 301: "Moved Permanently", 302: "Found",
  303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
  401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
  406: "Not Acceptable", 408: "Request Timeout", 409: "Conflict", 410: "Gone", 411: "Length Required",
  412: "Precondition Failed", 413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
  416: "Range Not Satisfiable", 417: "Expectation Failed", 418: "I'm a Teapot", 422: "Unprocessable Entity",
  425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
  431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons", 500: "Internal Server Error",
  501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/// Defines global `name` on `g` as the runtime's globals are: writable,
/// configurable, not enumerable. The primordial, since lazy globals call it
/// from guest time too.
// Compiled into the snapshot (the parentheses; see bootstrap.js), as are
// the two below: every isolate's lockdown calls them.
export const defineGlobal = (function defineGlobal(g, name, value) {
  ObjectDefineProperty(g, name, { __proto__: null, value, writable: true, configurable: true, enumerable: false });
});

/// Defines global `name` on `g` as `make()`'s result, made on its first
/// read (a write before that replaces it unmade).
export const defineLazyGlobal = (function defineLazyGlobal(g, name, make) {
  ObjectDefineProperty(g, name, {
    __proto__: null,
    get() {
      const value = make();
      defineGlobal(g, name, value);
      return value;
    },
    set(value) {
      defineGlobal(g, name, value);
    },
    configurable: true,
    enumerable: false,
  });
});

/// Puts the Web API globals on the guest global.
export const install = (function install(g) {
  const define = (function define(name, value) {
    defineGlobal(g, name, value);
  });
  define("TextEncoder", TextEncoder);
  define("TextDecoder", TextDecoder);
  define("atob", atob);
  define("btoa", btoa);
  define("DOMException", DOMException);
  define("Event", Event);
  define("CustomEvent", CustomEvent);
  define("EventTarget", EventTarget);
  define("AbortController", AbortController);
  define("AbortSignal", AbortSignal);
  define("Headers", Headers);
  define("Request", Request);
  define("Response", Response);
  define("ReadableStream", ReadableStream);
  define("ReadableStreamDefaultReader", ReadableStreamDefaultReader);
  define("ReadableStreamDefaultController", ReadableStreamDefaultController);
  define("Blob", Blob);
  define("File", File);
  define("FormData", FormData);
  define("fetch", function fetch(input, init = undefined) {
    return guestFetch(input, init);
  });
  define("structuredClone", structuredClone);
  define("CompressionStream", CompressionStream);
  define("DecompressionStream", DecompressionStream);
  define("crypto", webcrypto);
  define("Crypto", Crypto);
  define("CryptoKey", CryptoKey);
  define("SubtleCrypto", SubtleCrypto);
  // URL and URLSearchParams load whatwg-url on first use, the messaging
  // classes the bundle, the streams beyond ReadableStream streams.js.
  const lazy = (name) => {
    if (name === "URL") return URLCtor();
    if (name === "URLSearchParams") return URLSearchParamsCtor();
    if (ArrayPrototypeIncludes(MESSAGING_GLOBALS, name)) return polyfill("messaging")[name];
    return webStreams()[name];
  };
  for (const name of ["URL", "URLSearchParams", ...MESSAGING_GLOBALS, ...STREAM_GLOBALS]) {
    defineLazyGlobal(g, name, () => lazy(name));
  }
});

// How Node 20's util.inspect shows these classes (each is its
// `[util.inspect.custom]` in Node's lib/). The `inspect` passed in is the
// caller's (util's), so the runtime needs nothing from the bundle; the
// getters read throw for anything but an instance, as Node's do.
const kInspect = SymbolFor("nodejs.util.inspect.custom");
const inspectAs = (function inspectAs(ctor, show) {
  ObjectDefineProperty(ctor.prototype, kInspect, {
    __proto__: null,
    value: {
      [kInspect](depth, options, inspect) {
        return show(this, depth, options, inspect);
      },
    }[kInspect],
    writable: true,
    configurable: true,
    enumerable: false,
  });
});

// Node's `customInspect` of internal/abort_controller.js and blob.js:
// `Name { fields }`, one level deeper.
function fieldsOf(fields) {
  return function (self, depth, options, inspect) {
    if (depth < 0) return self;
    const opts = { ...options, depth: options.depth == null ? null : options.depth - 1 };
    return `${self.constructor.name} ${inspect(fields(self), opts)}`;
  };
}
inspectAs(AbortController, fieldsOf((c) => ({ signal: c.signal })));
inspectAs(AbortSignal, fieldsOf((s) => ({ aborted: s.aborted })));
inspectAs(Blob, fieldsOf((b) => ({ size: b.size, type: b.type })));
inspectAs(File, fieldsOf((f) => ({ size: f.size, type: f.type, name: f.name, lastModified: f.lastModified })));
inspectAs(Headers, (h, depth, options, inspect) => {
  const entries = {};
  for (const [k, v] of h.entries()) entries[k] = v;
  return `Headers ${inspect(entries, { ...options, depth: options.depth ?? depth })}`;
});
// Node 20 shows a TextEncoder as a plain object of its one field.
inspectAs(TextEncoder, (e, depth, options, inspect) => {
  if (typeof depth === "number" && depth < 0) return e;
  const obj = ObjectCreate({ constructor: e.constructor });
  obj.encoding = e.encoding;
  return inspect(obj, options);
});
inspectAs(TextDecoder, (d, depth, options, inspect) => {
  if (typeof depth === "number" && depth < 0) return d;
  const obj = ObjectCreate({ constructor: d.constructor });
  obj.encoding = d.encoding;
  obj.fatal = d.fatal;
  obj.ignoreBOM = d.ignoreBOM;
  return `${d.constructor.name} ${inspect(obj)}`;
});

function structuredClone(value) {
  try {
    return op_structured_clone(value);
  } catch (e) {
    // V8's serializer says a value cannot be cloned with a TypeError; the
    // web (and Node) with a DataCloneError.
    if (e instanceof TypeErrorCtor && RegExpPrototypeTest(/could not be cloned|cannot be cloned/, e.message)) {
      throw new DOMException(e.message, "DataCloneError");
    }
    throw e;
  }
}

const guestFetch = fetch;

export {
  structuredClone,
  Blob,
  CompressionStream,
  DecompressionStream,
  DOMException,
  FormData,
  Headers,
  ReadableStream,
  ReadableStreamDefaultController,
  ReadableStreamDefaultReader,
  Request,
  Response,
  TextDecoder,
  TextEncoder,
};
