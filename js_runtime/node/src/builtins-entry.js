// Entry of the polyfill bundle (build.mjs -> dist/builtins.js): each
// built-in backed by an npm polyfill, as a thunk, so a module is evaluated
// only when an isolate first requires it. Polyfills requiring each other get
// the same instance (esbuild caches every CommonJS module once).
export const polyfills = {
  assert: () => require("assert/"),
  buffer: () => withBase64url(require("buffer/")),
  events: () => require("events/"),
  path: () => require("path-browserify"),
  punycode: () => require("punycode/"),
  querystring: () => require("querystring-es3"),
  stream: () => require("stream-browserify"),
  string_decoder: () => require("string_decoder/"),
  url: () => require("./url-node.js"),
  util: () => require("util/"),
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
