// Entry of the polyfill bundle (build.mjs -> dist/builtins.js): each
// built-in backed by an npm polyfill, as a thunk, so a module is evaluated
// only when an isolate first requires it. Polyfills requiring each other get
// the same instance (esbuild caches every CommonJS module once).
const { argType } = require("./node-errors.js");

export const polyfills = {
  assert: () => require("assert/"),
  buffer: () => withNode20Buffer(withBase64url(require("buffer/"))),
  events: () => require("events/"),
  path: () => require("path-browserify"),
  punycode: () => require("punycode/"),
  querystring: () => withEscape(require("querystring-es3")),
  stream: () => require("stream-browserify"),
  string_decoder: () => require("string_decoder/"),
  url: () => require("./url-node.js"),
  util: () => withNode20Util(require("util/")),
  whatwg_url: () => require("whatwg-url"),
};

// Node 20's Buffer speaks "base64url" (RFC 4648 section 5); the polyfill
// (buffer@6) predates it. Added once, on the module's first require.
let patched = false;
function withBase64url(mod) {
  if (patched) return mod;
  patched = true;
  const { Buffer } = mod;
  const isUrl = (enc) => typeof enc === "string" && enc.toLowerCase() === "base64url";
  const toStd = (s) => s.replace(/-/g, "+").replace(/_/g, "/");
  const from = Buffer.from;
  Buffer.from = function (value, encodingOrOffset, length) {
    if (typeof value === "string" && isUrl(encodingOrOffset)) return from.call(this, toStd(value), "base64");
    return from.call(this, value, encodingOrOffset, length);
  };
  const isEncoding = Buffer.isEncoding;
  Buffer.isEncoding = (enc) => isUrl(enc) || isEncoding(enc);
  const byteLength = Buffer.byteLength;
  Buffer.byteLength = function (string, encoding) {
    return typeof string === "string" && isUrl(encoding) ? byteLength(toStd(string), "base64") : byteLength(string, encoding);
  };
  const toString = Buffer.prototype.toString;
  Buffer.prototype.toString = function (encoding, start, end) {
    if (isUrl(encoding)) {
      return toString.call(this, "base64", start, end).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    }
    return toString.apply(this, arguments);
  };
  const write = Buffer.prototype.write;
  Buffer.prototype.write = function (string, offset, length, encoding) {
    for (let i = 1; i < arguments.length; i++) {
      if (isUrl(arguments[i])) {
        const args = Array.prototype.slice.call(arguments);
        args[0] = toStd(string);
        args[i] = "base64";
        return write.apply(this, args);
      }
    }
    return write.apply(this, arguments);
  };
  return mod;
}

// What Node 20's `util` has beyond the polyfill (util@0.12). The web classes
// are the globals, as in Node.
function withNode20Util(util) {
  if (util.isDeepStrictEqual) return util;
  const assert = require("assert/");
  util.isDeepStrictEqual = (a, b) => {
    try {
      assert.deepStrictEqual(a, b);
      return true;
    } catch {
      return false;
    }
  };
  // Node's pattern for ANSI escape sequences (lib/internal/util/inspect.js).
  const ansi = new RegExp(
    "[\\u001B\\u009B][[\\]()#;?]*" +
      "(?:(?:(?:(?:;[-a-zA-Z\\d\\/\\#&.:=?%@~_]+)*" +
      "|[a-zA-Z\\d]+(?:;[-a-zA-Z\\d\\/\\#&.:=?%@~_]*)*)?" +
      "(?:\\u0007|\\u001B\\u005C|\\u009C))" +
      "|(?:(?:\\d{1,4}(?:;\\d{0,4})*)?[\\dA-PR-TZcf-ntqry=><~]))",
    "g",
  );
  util.stripVTControlCharacters = (str) => {
    if (typeof str !== "string") throw argType("str", "of type string", str);
    return str.replace(ansi, "");
  };
  util.toUSVString = (input) => `${input}`.toWellFormed();
  util.TextEncoder = globalThis.TextEncoder;
  util.TextDecoder = globalThis.TextDecoder;
  return util;
}

// What Node 20's `buffer` has beyond the polyfill (buffer@6).
function withNode20Buffer(mod) {
  if (mod.isUtf8) return mod;
  const bytes = (input) => {
    if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    if (input instanceof ArrayBuffer) return new Uint8Array(input);
    throw argType("input", "an instance of ArrayBuffer, Buffer, or TypedArray", input);
  };
  mod.isUtf8 = (input) => {
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(bytes(input));
      return true;
    } catch (e) {
      if (e.code === "ERR_INVALID_ARG_TYPE") throw e;
      return false;
    }
  };
  mod.isAscii = (input) => bytes(input).every((b) => b < 0x80);
  mod.atob = globalThis.atob;
  mod.btoa = globalThis.btoa;
  mod.Blob = globalThis.Blob;
  mod.File = globalThis.File;
  // V8's longest string: (1 << 29) - 24 UTF-16 code units.
  mod.constants = Object.freeze({ MAX_LENGTH: mod.kMaxLength, MAX_STRING_LENGTH: 536870888 });
  return mod;
}

// Node's querystring.escape/unescape; the polyfill only uses them inside.
function withEscape(qs) {
  if (qs.escape) return qs;
  qs.escape = (str) => encodeURIComponent(typeof str === "string" ? str : `${str}`);
  qs.unescape = (str) => {
    try {
      return decodeURIComponent(str);
    } catch {
      // As Node: each valid %XX is a byte, the rest as it is, read as UTF-8
      // (an invalid sequence is one U+FFFD, as WHATWG decoding has it).
      const hex = (c) => (c >= 48 && c <= 57 ? c - 48 : (c | 32) >= 97 && (c | 32) <= 102 ? (c | 32) - 87 : -1);
      const out = [];
      const input = new TextEncoder().encode(str);
      for (let i = 0; i < input.length; i++) {
        if (input[i] === 37 && i + 2 < input.length && hex(input[i + 1]) >= 0 && hex(input[i + 2]) >= 0) {
          out.push(hex(input[i + 1]) * 16 + hex(input[i + 2]));
          i += 2;
        } else {
          out.push(input[i]);
        }
      }
      return new TextDecoder().decode(new Uint8Array(out));
    }
  };
  return qs;
}
