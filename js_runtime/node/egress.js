// The guest side of egress exchanges (src/engine/exchange.rs), shared by
// `fetch` (web.js) and Node's `http`/`https` clients (http.js): the ops,
// kept in this module's closure, and their failures as plain records
// `{ code, syscode, message }` each client turns into its own errors.
//
// An exchange is a small integer. start() sends the head (with a body
// known in full, or the first chunk of a streamed one); write()/finish()
// stream the rest of the body; head() resolves with the response status and
// headers; read() with each body chunk as it arrives (empty at the end);
// abort() cancels it, upstream connection included. Failures of an
// exchange the guest itself aborted have code "aborted".

const core = globalThis.Deno.core;
const {
  op_wt_fetch_outgoing,
  op_wt_fetch_start,
  op_wt_fetch_write,
  op_wt_fetch_finish,
  op_wt_fetch_head,
  op_wt_fetch_read,
  op_wt_fetch_take,
  op_wt_fetch_abort,
} = core.ops;
const { getAsyncContext } = core;
const {
  ArrayIsArray,
  ObjectDefineProperty,
  ObjectFreeze,
  PromisePrototypeThen,
  PromiseReject,
  String: StringCtor,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  Uint8Array: Uint8ArrayCtor,
} = globalThis.__bootstrap.primordials;

export const BODY_NONE = 0;
export const BODY_FULL = 1;
export const BODY_STREAM = 2;

const EMPTY = new Uint8ArrayCtor(0);

/// The bytes the host holds until they are sent: a fresh copy from the
/// isolate's allocator (see op_wt_fetch_outgoing). Throws a host error
/// record past the ArrayBuffer limit.
function outgoing(bytes) {
  if (bytes === undefined || bytes === null || bytes.byteLength === 0) return EMPTY;
  try {
    return op_wt_fetch_outgoing(bytes);
  } catch (e) {
    rethrow(e);
  }
}

function requestId() {
  const id = getAsyncContext();
  return typeof id === "number" ? id : 0;
}

/// A host error ("<code>[/<syscode>]: <message>") as a record.
export function hostError(e) {
  let text;
  try {
    text = typeof e?.message === "string" ? e.message : "request failed";
  } catch {
    text = "request failed";
  }
  const at = StringPrototypeIndexOf(text, ": ");
  if (at < 0) return ObjectFreeze({ code: "egress_failed", syscode: undefined, message: text });
  const prefix = StringPrototypeSlice(text, 0, at);
  const message = StringPrototypeSlice(text, at + 2);
  const slash = StringPrototypeIndexOf(prefix, "/");
  if (slash < 0) return ObjectFreeze({ code: prefix, syscode: undefined, message });
  return ObjectFreeze({ code: StringPrototypeSlice(prefix, 0, slash), syscode: StringPrototypeSlice(prefix, slash + 1), message });
}

function rethrow(e) {
  throw hostError(e);
}

/// Starts an exchange; `headers` is a list of [name, value]. Throws a
/// host error record (over the subrequest budget, body too large).
export function start(url, method, headers, mode, body) {
  // Own data properties only, defined (not assigned, which would run a
  // setter a guest put on Array.prototype): the op converts this list
  // while the isolate's state is borrowed, where no guest code may run.
  const list = [];
  if (ArrayIsArray(headers)) {
    for (let i = 0; i < headers.length; i++) {
      const pair = [];
      ObjectDefineProperty(pair, 0, { __proto__: null, value: StringCtor(headers[i][0]), writable: true, enumerable: true, configurable: true });
      ObjectDefineProperty(pair, 1, { __proto__: null, value: StringCtor(headers[i][1]), writable: true, enumerable: true, configurable: true });
      ObjectDefineProperty(list, i, { __proto__: null, value: pair, writable: true, enumerable: true, configurable: true });
    }
  }
  const own = outgoing(body);
  try {
    return op_wt_fetch_start(requestId(), { url: StringCtor(url), method: StringCtor(method), headers: list }, mode, own);
  } catch (e) {
    rethrow(e);
  }
}

export function write(rid, chunk) {
  let own;
  try {
    own = outgoing(chunk);
  } catch (e) {
    return PromiseReject(e);
  }
  return PromisePrototypeThen(op_wt_fetch_write(rid, own), undefined, rethrow);
}

export function finish(rid) {
  op_wt_fetch_finish(rid);
}

/// Resolves with `{ status, headers: [[name, value]...] }`.
export function head(rid) {
  return PromisePrototypeThen(op_wt_fetch_head(rid), undefined, rethrow);
}

/// Resolves with the next chunk (a Uint8Array), empty at the end. Its
/// buffer is allocated here, so it counts against the container's
/// ArrayBuffer limit (a RangeError past it) like any other.
export function read(rid) {
  return PromisePrototypeThen(op_wt_fetch_read(rid), (len) => {
    const chunk = new Uint8ArrayCtor(len);
    if (len > 0) op_wt_fetch_take(rid, chunk);
    return chunk;
  }, rethrow);
}

export function abort(rid) {
  op_wt_fetch_abort(rid);
}
