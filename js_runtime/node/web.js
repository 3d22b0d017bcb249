// Web API globals for guest code: TextEncoder/TextDecoder, atob/btoa,
// URL/URLSearchParams (whatwg-url, from the polyfill bundle), Headers,
// Request, Response (what `fetch` takes and returns), Event, EventTarget,
// AbortController/AbortSignal, structuredClone and `crypto` (WebCrypto).
// `install(global)` puts them on the guest global at lockdown.

import { polyfill } from "ext:webtask_runtime/node/require.js";
import { webcrypto } from "ext:webtask_runtime/node/crypto.js";

const core = globalThis.Deno.core;
const {
  ArrayBufferIsView,
  ArrayBuffer: ArrayBufferCtor,
  ArrayIsArray,
  ArrayPrototypePush,
  ObjectKeys,
  String: StringCtor,
  StringPrototypeCharCodeAt,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  TypeError: TypeErrorCtor,
  Uint8Array: Uint8ArrayCtor,
  SafeMap,
  JSONParse,
} = globalThis.__bootstrap.primordials;
const { encode, decode } = core;
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

class TextDecoder {
  #fatal;
  #ignoreBOM;
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
  decode(input, _options) {
    let bytes = bytesOf(input);
    if (this.#fatal && !validUtf8(bytes)) {
      const err = new TypeErrorCtor("The encoded data was not valid for encoding utf-8");
      err.code = "ERR_ENCODING_INVALID_ENCODED_DATA";
      throw err;
    }
    // core.decode strips a BOM itself; keep it when asked to.
    if (this.#ignoreBOM && bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
      return "\ufeff" + decode(bytes.subarray(3));
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
}

class EventTarget {
  #listeners = new SafeMap();
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
        list.splice(i, 1);
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
      for (const { listener, once } of [...list]) {
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
  const err = new Error(message);
  err.name = "AbortError";
  err.code = 20;
  return err;
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
    setTimeout(() => {
      const err = new Error("The operation was aborted due to timeout");
      err.name = "TimeoutError";
      err.code = 23;
      c.abort(err);
    }, ms);
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
// Fetch types.
// ---------------------------------------------------------------------------

class Headers {
  #map = new SafeMap();
  get [Symbol.toStringTag]() {
    return "Headers";
  }
  constructor(init) {
    if (init === undefined || init === null) return;
    if (init instanceof Headers) {
      init.forEach((v, k) => this.append(k, v));
    } else if (ArrayIsArray(init)) {
      for (let i = 0; i < init.length; i++) this.append(init[i][0], init[i][1]);
    } else if (typeof init === "object") {
      const keys = ObjectKeys(init);
      for (let i = 0; i < keys.length; i++) this.append(keys[i], init[keys[i]]);
    }
  }
  append(name, value) {
    const k = StringPrototypeToLowerCase(StringCtor(name));
    const v = StringCtor(value).trim();
    const prev = this.#map.get(k);
    this.#map.set(k, prev === undefined ? v : prev + ", " + v);
  }
  set(name, value) {
    this.#map.set(StringPrototypeToLowerCase(StringCtor(name)), StringCtor(value).trim());
  }
  get(name) {
    return this.#map.get(StringPrototypeToLowerCase(StringCtor(name))) ?? null;
  }
  has(name) {
    return this.#map.has(StringPrototypeToLowerCase(StringCtor(name)));
  }
  delete(name) {
    this.#map.delete(StringPrototypeToLowerCase(StringCtor(name)));
  }
  forEach(fn, thisArg) {
    for (const [k, v] of this.entries()) fn.call(thisArg, v, k, this);
  }
  *entries() {
    const keys = [...this.#map.keys()].sort();
    for (const k of keys) yield [k, this.#map.get(k)];
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

function bodyBytes(body) {
  if (body === undefined || body === null) return null;
  if (typeof body === "string") return encode(body);
  if (ArrayBufferIsView(body)) return new Uint8ArrayCtor(body.buffer, body.byteOffset, body.byteLength).slice();
  if (body instanceof ArrayBufferCtor) return new Uint8ArrayCtor(body).slice();
  if (body instanceof URLSearchParamsCtor()) return encode(body.toString());
  return encode(StringCtor(body));
}

function defaultContentType(body) {
  if (typeof body === "string") return "text/plain;charset=UTF-8";
  if (body instanceof URLSearchParamsCtor()) return "application/x-www-form-urlencoded;charset=UTF-8";
  return null;
}

class Body {
  #bytes;
  #used = false;
  constructor(bytes) {
    this.#bytes = bytes;
  }
  get bodyUsed() {
    return this.#used;
  }
  get body() {
    return this.#bytes === null ? null : this.#bytes;
  }
  #take() {
    if (this.#used) return Promise.reject(new TypeErrorCtor("Body is unusable: Body has already been read"));
    this.#used = true;
    return Promise.resolve(this.#bytes ?? new Uint8ArrayCtor(0));
  }
  _bytes() {
    return this.#bytes;
  }
  arrayBuffer() {
    return this.#take().then((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  }
  bytes() {
    return this.#take().then((b) => new Uint8ArrayCtor(b));
  }
  text() {
    return this.#take().then((b) => decode(b));
  }
  json() {
    return this.#take().then((b) => JSONParse(decode(b)));
  }
}

class Request extends Body {
  constructor(input, init = {}) {
    const from = input instanceof Request ? input : null;
    const body = init.body !== undefined ? bodyBytes(init.body) : from ? from._bytes() : null;
    super(body);
    this.url = from ? from.url : new (URLCtor())(StringCtor(input)).href;
    this.method = StringPrototypeToUpperCase(StringCtor(init.method ?? (from ? from.method : "GET")));
    this.headers = new Headers(init.headers ?? (from ? from.headers : undefined));
    const ct = init.body !== undefined ? defaultContentType(init.body) : null;
    if (ct && !this.headers.has("content-type")) this.headers.set("content-type", ct);
    this.signal = init.signal ?? (from ? from.signal : new AbortController().signal);
    this.redirect = init.redirect ?? "follow";
  }
  clone() {
    return new Request(this);
  }
  get [Symbol.toStringTag]() {
    return "Request";
  }
}

class Response extends Body {
  constructor(body = null, init = {}) {
    super(bodyBytes(body));
    const status = init.status ?? 200;
    if (typeof status !== "number" || status < 200 || status > 599) {
      throw new RangeError(`The status provided (${status}) is outside the range [200, 599].`);
    }
    this.status = status;
    this.statusText = init.statusText ?? "";
    this.ok = status >= 200 && status < 300;
    this.headers = new Headers(init.headers);
    const ct = defaultContentType(body);
    if (ct && !this.headers.has("content-type")) this.headers.set("content-type", ct);
    this.url = init.url ?? "";
    this.redirected = false;
    this.type = "default";
  }
  clone() {
    return new Response(this._bytes(), this);
  }
  get [Symbol.toStringTag]() {
    return "Response";
  }
  static json(data, init = {}) {
    const headers = new Headers(init.headers);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
    return new Response(JSON.stringify(data), { ...init, headers });
  }
  static error() {
    const r = new Response(null, { status: 200 });
    r.type = "error";
    return r;
  }
}

let whatwg;
function URLCtor() {
  return (whatwg ??= polyfill("whatwg_url")).URL;
}
function URLSearchParamsCtor() {
  return (whatwg ??= polyfill("whatwg_url")).URLSearchParams;
}

/// Puts the Web API globals on the guest global.
export function install(g) {
  const define = (name, value) => {
    Object.defineProperty(g, name, { value, writable: true, configurable: true, enumerable: false });
  };
  define("TextEncoder", TextEncoder);
  define("TextDecoder", TextDecoder);
  define("atob", atob);
  define("btoa", btoa);
  define("Event", Event);
  define("EventTarget", EventTarget);
  define("AbortController", AbortController);
  define("AbortSignal", AbortSignal);
  define("Headers", Headers);
  define("Request", Request);
  define("Response", Response);
  define("structuredClone", function structuredClone(value) {
    return op_structured_clone(value);
  });
  define("crypto", webcrypto);
  // URL and URLSearchParams load whatwg-url on first use.
  for (const name of ["URL", "URLSearchParams"]) {
    Object.defineProperty(g, name, {
      get() {
        const value = name === "URL" ? URLCtor() : URLSearchParamsCtor();
        define(name, value);
        return value;
      },
      set(value) {
        define(name, value);
      },
      configurable: true,
      enumerable: false,
    });
  }
}

export { Headers, Request, Response, TextDecoder, TextEncoder };
