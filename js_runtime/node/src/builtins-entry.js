// Entry of the polyfill bundle (build.mjs -> dist/builtins.js): each
// built-in backed by an npm polyfill, as a thunk, so a module is evaluated
// only when an isolate first requires it. Polyfills requiring each other get
// the same instance (esbuild caches every CommonJS module once).
const { argType, coded } = require("./node-errors.js");

export const polyfills = {
  assert: () => require("assert/"),
  buffer: () => withNode20Buffer(withBase64url(require("buffer/"))),
  events: () => require("events/"),
  messaging: () => require("./messaging.js"),
  path: () => withNamespacedPath(require("path-browserify")),
  punycode: () => require("punycode/"),
  querystring: () => withEscape(require("querystring-es3")),
  stream: () => require("./stream-node20.js").withNode20(require("readable-stream/lib/stream.js")),
  stream_consumers: () => require("./stream-node20.js").consumers,
  string_decoder: () => require("string_decoder/"),
  url: () => require("./url-node.js"),
  // `host`: what Node reads from V8 (see src/util-node20.js).
  util: (host) => require("./util-node20.js")(require("util/"), host),
  whatwg_url: () => withInspect(require("whatwg-url")),
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

const kInspect = Symbol.for("nodejs.util.inspect.custom");

// URL and URLSearchParams as Node 20's util.inspect shows them (their
// `[util.inspect.custom]` in Node's lib/internal/url.js).
function withInspect(whatwg) {
  const { URL, URLSearchParams } = whatwg;
  if (Object.hasOwn(URL.prototype, kInspect)) return whatwg;
  Object.defineProperty(URL.prototype, kInspect, {
    value: function (depth, opts, inspect) {
      if (typeof depth === "number" && depth < 0) return this;
      const constructor = this.constructor || URL;
      const obj = { __proto__: { constructor } };
      for (const key of ["href", "origin", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "searchParams", "hash"]) {
        obj[key] = this[key];
      }
      return `${constructor.name} ${inspect(obj, opts)}`;
    },
    writable: true,
    configurable: true,
  });
  Object.defineProperty(URLSearchParams.prototype, kInspect, {
    value: function (recurseTimes, ctx, inspect) {
      if (typeof recurseTimes === "number" && recurseTimes < 0) return ctx.stylize("[Object]", "special");
      const innerOpts = { ...ctx };
      if (recurseTimes !== null) innerOpts.depth = recurseTimes - 1;
      const output = [];
      for (const [name, value] of this) output.push(`${inspect(name, innerOpts)} => ${inspect(value, innerOpts)}`);
      const plain = (s) => s.replace(/\u001b\[\d\d?m/g, "");
      const length = output.reduce((prev, cur) => prev + plain(cur).length + 2, -2);
      if (length > ctx.breakLength) return `${this.constructor.name} {\n  ${output.join(",\n  ")} }`;
      if (output.length) return `${this.constructor.name} { ${output.join(", ")} }`;
      return `${this.constructor.name} {}`;
    },
    writable: true,
    configurable: true,
  });
  return whatwg;
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
  // Node 20's `<Buffer 61 62 ... 10 more bytes>`, own properties after the
  // bytes (buffer@6 ends a long one in " ... " and shows none).
  Object.defineProperty(mod.Buffer.prototype, kInspect, {
    value: function inspect(recurseTimes, ctx, inspectValue) {
      const max = mod.INSPECT_MAX_BYTES;
      const remaining = this.length - max;
      let str = this.toString("hex", 0, Math.min(max, this.length)).replace(/(.{2})/g, "$1 ").trim();
      if (remaining > 0) str += ` ... ${remaining} more byte${remaining > 1 ? "s" : ""}`;
      if (ctx && inspectValue) {
        const obj = { __proto__: null };
        let extras = false;
        for (const key of Object.keys(this)) {
          if (/^(0|[1-9][0-9]*)$/.test(key) && Number(key) < 2 ** 32 - 1) continue;
          extras = true;
          obj[key] = this[key];
        }
        if (extras) {
          if (this.length !== 0) str += ", ";
          str += inspectValue(obj, { ...ctx, breakLength: Infinity, compact: true }).slice(27, -2);
        }
      }
      return `<${this.constructor.name} ${str}>`;
    },
    writable: true,
    configurable: true,
  });
  mod.Buffer.prototype.inspect = mod.Buffer.prototype[kInspect];
  mod.atob = globalThis.atob;
  mod.btoa = globalThis.btoa;
  mod.Blob = globalThis.Blob;
  mod.File = globalThis.File;
  // V8's longest string: (1 << 29) - 24 UTF-16 code units.
  mod.kStringMaxLength = 536870888;
  mod.constants = Object.freeze({ MAX_LENGTH: mod.kMaxLength, MAX_STRING_LENGTH: mod.kStringMaxLength });
  mod.transcode = (source, fromEnc, toEnc) => transcode(mod.Buffer, source, fromEnc, toEnc);
  // No blob: URLs are made here (URL.createObjectURL is not offered).
  mod.resolveObjectURL = () => undefined;
  return mod;
}

// Node's buffer.transcode between the encodings ICU converts: what the
// target cannot hold becomes "?" (U+FFFD from UTF-16 to UTF-8 for a lone
// surrogate, as ICU).
const TRANSCODE = { ascii: "ascii", latin1: "latin1", binary: "latin1", ucs2: "utf16le", "ucs-2": "utf16le", utf16le: "utf16le", "utf-16le": "utf16le", utf8: "utf8", "utf-8": "utf8" };
function transcode(Buffer, source, fromEnc, toEnc) {
  if (!(source instanceof Uint8Array)) throw argType("source", "an instance of Buffer or Uint8Array", source);
  const from = TRANSCODE[`${fromEnc}`.toLowerCase()];
  const to = TRANSCODE[`${toEnc}`.toLowerCase()];
  if (from === undefined || to === undefined) {
    const err = coded(Error, "U_ILLEGAL_ARGUMENT_ERROR", "Unable to transcode Buffer [U_ILLEGAL_ARGUMENT_ERROR]");
    err.errno = 1;
    throw err;
  }
  if (source.length === 0) return Buffer.alloc(0);
  let text = Buffer.from(source.buffer, source.byteOffset, source.byteLength).toString(from);
  if (to === "ascii") text = text.replace(/[^\x00-\x7f]/gu, "?");
  else if (to === "latin1") text = text.replace(/[^\x00-\xff]/gu, "?");
  else text = text.toWellFormed();
  return Buffer.from(text, to);
}

// Node's path.toNamespacedPath: on POSIX, what it is given.
function withNamespacedPath(path) {
  path.toNamespacedPath ??= (p) => p;
  return path;
}

// Node's querystring.escape/unescape (the polyfill only uses them inside)
// and unescapeBuffer.
function withEscape(qs) {
  if (qs.escape) return qs;
  qs.escape = (str) => encodeURIComponent(typeof str === "string" ? str : `${str}`);
  qs.unescape = (str) => {
    try {
      return decodeURIComponent(str);
    } catch {
      // As Node: the bytes read as UTF-8 (an invalid sequence is one
      // U+FFFD, as WHATWG decoding has it).
      return new TextDecoder().decode(unescapeBytes(str, false));
    }
  };
  qs.unescapeBuffer = (str, decodeSpaces) => require("buffer/").Buffer.from(unescapeBytes(`${str}`, !!decodeSpaces));
  return qs;
}

// Each valid %XX of `str` as that byte, the rest as its UTF-8; with
// `decodeSpaces`, "+" as a space.
function unescapeBytes(str, decodeSpaces) {
  const hex = (c) => (c >= 48 && c <= 57 ? c - 48 : (c | 32) >= 97 && (c | 32) <= 102 ? (c | 32) - 87 : -1);
  const out = [];
  const input = new TextEncoder().encode(str);
  for (let i = 0; i < input.length; i++) {
    if (input[i] === 37 && i + 2 < input.length && hex(input[i + 1]) >= 0 && hex(input[i + 2]) >= 0) {
      out.push(hex(input[i + 1]) * 16 + hex(input[i + 2]));
      i += 2;
    } else {
      out.push(decodeSpaces && input[i] === 43 ? 32 : input[i]);
    }
  }
  return new Uint8Array(out);
}
