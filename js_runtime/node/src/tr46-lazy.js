// What whatwg-url gets for `require("tr46")` (build.mjs swaps it in): tr46
// itself, loaded only for a domain that needs its Unicode tables. Those
// tables are a third of the polyfill bundle, and evaluating them was most of
// an isolate's first `new URL()` (10-30 ms in a new container).
//
// Under the options whatwg-url parses URLs with (below), tr46 maps every
// ASCII code point to itself or its lowercase and finds nothing to reject,
// so an all-ASCII domain with no "xn--" label comes back lowercased; build.mjs
// checks that claim against tr46 on every build. Anything else, and every
// other call, goes to tr46.
"use strict";

let tr46;
const full = () => (tr46 ??= require("tr46/index.js"));

const ASCII = /^[\x00-\x7F]*$/;
const PUNYCODE_LABEL = /(?:^|\.)xn--/;

function asciiFastPath(domain, options) {
  if (options.checkHyphens || options.useSTD3ASCIIRules || options.verifyDNSLength || options.transitionalProcessing) return null;
  if (!ASCII.test(domain)) return null;
  const lower = domain.toLowerCase();
  return PUNYCODE_LABEL.test(lower) ? null : lower;
}

module.exports = {
  toASCII(domain, options = {}) {
    return asciiFastPath(domain, options) ?? full().toASCII(domain, options);
  },
  toUnicode(domain, options) {
    return full().toUnicode(domain, options);
  },
};
