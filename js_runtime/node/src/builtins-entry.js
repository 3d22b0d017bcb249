// Entry of the polyfill bundle (build.mjs -> dist/builtins.js): each
// built-in backed by an npm polyfill, as a thunk, so a module is evaluated
// only when an isolate first requires it. Polyfills requiring each other get
// the same instance (esbuild caches every CommonJS module once).
export const polyfills = {
  assert: () => require("assert/"),
  buffer: () => require("buffer/"),
  events: () => require("events/"),
  path: () => require("path-browserify"),
  punycode: () => require("punycode/"),
  querystring: () => require("querystring-es3"),
  stream: () => require("stream-browserify"),
  string_decoder: () => require("string_decoder/"),
  url: () => require("url/"),
  util: () => require("util/"),
  whatwg_url: () => require("whatwg-url"),
};
