// What node-inspect-extracted reads from V8 internals in Node, filled in
// by util's first require (src/util-node20.js) with the host's answer.
// build.mjs points the package's stand-ins at it.
"use strict";

module.exports = {
  // (promise) => [state, result]: 0 pending, 1 fulfilled, 2 rejected.
  promiseDetails: null,
  // (object) => [entries, isKeyValue] of a Map, Set, WeakMap, WeakSet or
  // their iterators; undefined for anything else.
  previewEntries: null,
  // util.types, as V8 answers them.
  types: null,
  intrinsics: require("webtask:node-facts").intrinsics,
};
