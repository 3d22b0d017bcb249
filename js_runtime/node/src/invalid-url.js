// The error Node 20 throws for a URL (or base) it cannot parse, which
// whatwg-url throws as a plain TypeError naming the input in its message
// (build.mjs swaps this in for those throws): code ERR_INVALID_URL, the
// input (and the base, when one was given) as properties, the message
// without the input.
"use strict";

module.exports = function invalidUrl(input, base) {
  const err = new TypeError("Invalid URL");
  err.code = "ERR_INVALID_URL";
  err.input = input;
  if (base !== undefined) err.base = base;
  return err;
};
