// Node's coded errors, for what the bundle adds to the polyfills: the
// message and `code` Node 20 gives the same mistake.
"use strict";

function coded(Ctor, code, message) {
  const err = new Ctor(message);
  err.code = code;
  return err;
}

// How Node's ERR_INVALID_ARG_TYPE describes the value it got.
function received(value) {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (typeof value === "function") return `function ${value.name}`;
  if (typeof value === "object") return `an instance of ${value.constructor?.name || "Object"}`;
  let shown = String(value);
  if (typeof value === "string") shown = `'${shown.length > 25 ? shown.slice(0, 25) + "..." : shown}'`;
  return `type ${typeof value} (${shown})`;
}

// `expected` as Node words it: "of type string", "an instance of ...".
// A dotted name is a property, as Node says.
function argType(name, expected, value) {
  const what = name.includes(".") ? "property" : "argument";
  return coded(TypeError, "ERR_INVALID_ARG_TYPE", `The "${name}" ${what} must be ${expected}. Received ${received(value)}`);
}

module.exports = { coded, argType };
