// Node's `http` and `https` clients over the node's egress (egress.js, the
// same way out as guest `fetch`: the node resolves, checks the address
// policy and connects; nothing here touches a socket).
//
// A ClientRequest streams as Node's does: its head goes out with the first
// write() (or flushHeaders()), every write() follows as it is made
// (chunked, unless the guest set content-length), and a write's callback
// runs once the chunk is on its way, so piping into it is paced by the
// upstream. A request ended with no write before is sent whole, with a
// content-length. The IncomingMessage is a Readable whose chunks arrive as
// the upstream sends them, read no faster than the guest consumes them.
// Events and errors follow Node 20: 'socket', 'finish', 'response',
// 'timeout' (setTimeout / the `timeout` option: idle time, which does not
// end the request by itself), abort()/destroy() ('abort', ECONNRESET
// "socket hang up" before the response, 'aborted' and ECONNRESET "aborted"
// on the response after it) and 'close'; a failed exchange's error has the
// Node code where there is one (ECONNREFUSED, ENOTFOUND, ECONNRESET,
// ETIMEDOUT) and the egress code otherwise (egress_denied, egress_limit).
// The socket is a stand-in (there is none in the isolate). Redirects are
// not followed, as in Node. Servers are not available: a webtask answers
// through its function, never by listening.

import { builtin, registerBuiltin, unavailableError } from "ext:webtask_runtime/node/require.js";
import * as egress from "ext:webtask_runtime/node/egress.js";

const {
  ArrayIsArray,
  ArrayPrototypeIncludes,
  ArrayPrototypePush,
  JSONStringify,
  ObjectKeys,
  PromisePrototypeThen,
  String: StringCtor,
  StringPrototypeIndexOf,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  TypeError: TypeErrorCtor,
  Uint8Array: Uint8ArrayCtor,
} = globalThis.__bootstrap.primordials;

// The request target, as Node checks it (ERR_UNESCAPED_CHARACTERS). Only
// origin-form paths ("/..."): the request goes out as a URL made of host,
// port and path, and a path such as "@other:80/" would make that URL name
// another host, sending the webtask's headers (its credentials) there.
function requestPath(path) {
  if (path === undefined || path === null || path === "") return "/";
  path = StringCtor(path);
  if (/[^\u0021-\u00ff]/.test(path)) {
    const err = new TypeErrorCtor("Request path contains unescaped characters");
    err.code = "ERR_UNESCAPED_CHARACTERS";
    throw err;
  }
  if (path[0] !== "/") {
    const err = new TypeErrorCtor(`Request path must start with "/" in webtask (origin form): ${JSONStringify(path)}`);
    err.code = "ERR_INVALID_ARG_VALUE";
    throw err;
  }
  return path;
}

const STATUS_CODES = {
  100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints", 200: "OK", 201: "Created",
  202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content", 205: "Reset Content",
  206: "Partial Content", 207: "Multi-Status", 208: "Already Reported", 226: "IM Used", 300: "Multiple Choices",
  301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified", 305: "Use Proxy",
  307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized",
  402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
  407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
  411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large", 414: "URI Too Long",
  415: "Unsupported Media Type", 416: "Range Not Satisfiable", 417: "Expectation Failed", 418: "I'm a Teapot",
  421: "Misdirected Request", 422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
  425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
  431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons", 500: "Internal Server Error",
  501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
  505: "HTTP Version Not Supported", 506: "Variant Also Negotiates", 507: "Insufficient Storage",
  508: "Loop Detected", 509: "Bandwidth Limit Exceeded", 510: "Not Extended",
  511: "Network Authentication Required",
};
const METHODS = [
  "ACL", "BIND", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD", "LINK", "LOCK", "M-SEARCH", "MERGE",
  "MKACTIVITY", "MKCALENDAR", "MKCOL", "MOVE", "NOTIFY", "OPTIONS", "PATCH", "POST", "PROPFIND", "PROPPATCH",
  "PURGE", "PUT", "REBIND", "REPORT", "SEARCH", "SOURCE", "SUBSCRIBE", "TRACE", "UNBIND", "UNLINK", "UNLOCK",
  "UNSUBSCRIBE",
];

let ServerResponse = function () {
  throw unavailableError("http.ServerResponse");
};

let prepareServerResponse = () => {};

/// The runtime's response class, which is what `(context, req, res)` gets,
/// and the function that makes it an EventEmitter.
export function provideServerResponse(cls, prepare) {
  ServerResponse = cls;
  prepareServerResponse = prepare;
}

/// The `req` of `(context, req, res)`: a readable IncomingMessage of the
/// request's body.
export function incomingMessage(method, url, headers, rawBody) {
  const http = builtin("http");
  const { Buffer } = builtin("buffer");
  const EventEmitter = builtin("events");
  const body = rawBody === undefined ? new Uint8Array(0) : Buffer.from(rawBody);
  const raw = [];
  for (const k of ObjectKeys(headers)) ArrayPrototypePush(raw, { 0: k, 1: headers[k] });
  const req = new http.IncomingMessage({ status: null, headers: raw, body }, null);
  req.statusCode = null;
  req.statusMessage = null;
  req.method = method;
  req.url = url;
  // The framing headers describe the body this stream carries (with the
  // JSON form of /api/run that is the envelope's `body`, not the envelope).
  const own = { ...headers };
  delete own["transfer-encoding"];
  if (body.length > 0) own["content-length"] = StringCtor(body.length);
  else delete own["content-length"];
  req.headers = own;
  // Express reads `connection.encrypted` and `remoteAddress`; on-finished
  // listens on the socket. There is no socket: a plain emitter stands in.
  const socket = new EventEmitter();
  socket.encrypted = false;
  socket.readable = false;
  socket.writable = false;
  socket.remoteAddress = undefined;
  req.socket = req.connection = socket;
  return req;
}

// Where an IncomingMessage keeps its unread body: not `_body`, which
// body-parser uses as its "already parsed" flag.
const BODY = Symbol("body");

// Methods Node sends without a body unless given one (no content-length: 0).
const NO_DEFAULT_BODY = ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

function createHttp(defaultProtocol) {
  prepareServerResponse();
  const { Buffer } = builtin("buffer");
  const { Readable, Writable } = builtin("stream");
  const EventEmitter = builtin("events");
  const { inherits } = builtin("util");
  const nextTick = (fn, ...args) => queueMicrotask(() => fn(...args));
  const guest = globalThis;

  function connReset(message) {
    const err = new Error(message);
    err.code = "ECONNRESET";
    return err;
  }

  /// A failed exchange as Node reports it: the system error's code where
  /// there is one, the egress code (egress_denied, egress_limit) otherwise.
  function exchangeError(e, req) {
    if (e.syscode === "ECONNRESET") return connReset("socket hang up");
    let message = e.message;
    if (e.syscode === "ECONNREFUSED") message = `connect ECONNREFUSED ${req.host}:${req._port}`;
    else if (e.syscode === "ENOTFOUND" || e.syscode === "EAI_AGAIN") message = `getaddrinfo ${e.syscode} ${req.host}`;
    const err = new Error(message);
    err.code = e.syscode ?? e.code;
    if (e.syscode !== undefined) err.egress = e.code;
    return err;
  }

  function Agent(options) {
    if (!(this instanceof Agent)) return new Agent(options);
    EventEmitter.call(this);
    this.options = { ...options };
    this.keepAlive = !!(options && options.keepAlive);
    this.maxSockets = (options && options.maxSockets) || Infinity;
    this.maxFreeSockets = (options && options.maxFreeSockets) || 256;
    this.sockets = {};
    this.freeSockets = {};
    this.requests = {};
    this.defaultPort = defaultProtocol === "https:" ? 443 : 80;
    this.protocol = defaultProtocol;
  }
  inherits(Agent, EventEmitter);
  Agent.prototype.destroy = function () {};
  Agent.prototype.getName = function (options) {
    return `${options.host || "localhost"}:${options.port || ""}:${options.localAddress || ""}`;
  };

  /// What a request's `socket` is: there is no socket in the isolate, so
  /// an emitter that answers what clients ask of one (and, for https, says
  /// the peer was verified: the egress refuses certificates it cannot).
  function Socket(req) {
    EventEmitter.call(this);
    this._req = req;
    this.encrypted = req.protocol === "https:";
    this.authorized = this.encrypted;
    this.authorizationError = null;
    this.connecting = false;
    this._connecting = false;
    this.readable = true;
    this.writable = true;
    this.destroyed = false;
    this.remoteAddress = undefined;
    this.remotePort = undefined;
    this.remoteFamily = undefined;
    this.localAddress = undefined;
    this.localPort = undefined;
    this.bytesRead = 0;
    this.bytesWritten = 0;
  }
  inherits(Socket, EventEmitter);
  Socket.prototype.setTimeout = function (ms, cb) {
    if (cb) this.once("timeout", cb);
    this._req._setIdle(ms);
    return this;
  };
  Socket.prototype.setNoDelay = function () {
    return this;
  };
  Socket.prototype.setKeepAlive = function () {
    return this;
  };
  Socket.prototype.ref = function () {
    return this;
  };
  Socket.prototype.unref = function () {
    return this;
  };
  Socket.prototype.address = function () {
    return {};
  };
  Socket.prototype.getPeerCertificate = function () {
    return {};
  };
  Socket.prototype.end = function () {
    return this;
  };
  Socket.prototype.destroy = function (err) {
    this._req.destroy(err);
    return this;
  };

  /// A response (`res.rid`: its body streams from the exchange) or, for
  /// the `req` of `(context, req, res)`, a body known in full (`res.body`).
  function IncomingMessage(res, req) {
    Readable.call(this, { emitClose: false });
    this.statusCode = res.status;
    this.statusMessage = STATUS_CODES[res.status] || "";
    this.httpVersion = "1.1";
    this.httpVersionMajor = 1;
    this.httpVersionMinor = 1;
    this.headers = {};
    this.rawHeaders = [];
    this.trailers = {};
    this.rawTrailers = [];
    this.req = req;
    this.url = "";
    this.method = null;
    this.complete = false;
    this.aborted = false;
    this.socket = this.connection = req ? req.socket : null;
    for (let i = 0; i < res.headers.length; i++) {
      const { 0: k, 1: v } = res.headers[i];
      ArrayPrototypePush(this.rawHeaders, k, v);
      const key = StringPrototypeToLowerCase(k);
      const prev = this.headers[key];
      if (key === "set-cookie") {
        if (prev === undefined) this.headers[key] = [v];
        else ArrayPrototypePush(prev, v);
      } else {
        this.headers[key] = prev === undefined ? v : prev + ", " + v;
      }
    }
    this[BODY] = res.body === undefined ? null : res.body;
    this._rid = res.rid ?? 0;
    this._reading = false;
    this._closeEmitted = false;
  }
  inherits(IncomingMessage, Readable);
  IncomingMessage.prototype._read = function () {
    const body = this[BODY];
    if (body !== null) {
      this[BODY] = null;
      if (body.length > 0) this.push(Buffer.from(body.buffer, body.byteOffset, body.byteLength));
      this.complete = true;
      this.push(null);
      return;
    }
    if (this._reading || this._rid === 0) return;
    this._reading = true;
    const rid = this._rid;
    PromisePrototypeThen(egress.read(rid), (chunk) => {
      this._reading = false;
      if (this._rid !== rid) return;
      if (this.req) this.req._activity();
      if (chunk.length === 0) {
        this._rid = 0;
        this.complete = true;
        this.push(null);
        return;
      }
      this.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    }, (e) => {
      this._reading = false;
      if (this._rid !== rid) return;
      this._rid = 0;
      if (e.code === "aborted") return;
      // The guest's side failed (a chunk past the ArrayBuffer limit): the
      // exchange is given up, and the error is the guest's as it is.
      if (e.code === undefined) {
        egress.abort(rid);
        this._abort(e);
        return;
      }
      // The upstream failed mid-body: as Node, 'aborted', then an error.
      const err = e.syscode !== undefined && e.code === "egress_failed" ? connReset("aborted") : exchangeError(e, this.req);
      this._abort(err);
    });
  };
  /// The body ends unfinished: 'aborted', the request's 'close', then
  /// `err` and 'close' on this response.
  IncomingMessage.prototype._abort = function (err) {
    this.aborted = true;
    nextTick(() => {
      this.emit("aborted");
      if (this.req) this.req._emitClose();
      this.destroy(err);
    });
  };
  IncomingMessage.prototype._destroy = function (err, cb) {
    const rid = this._rid;
    this._rid = 0;
    if (rid !== 0) {
      egress.abort(rid);
      if (!this.complete) {
        this.aborted = true;
        this.emit("aborted");
      }
    }
    // As Node's: an unfinished response's error goes only to listeners.
    cb(this.listenerCount("error") === 0 ? null : err);
    nextTick(() => {
      this._emitClose();
      if (this.req) this.req._emitClose();
    });
  };
  IncomingMessage.prototype._emitClose = function () {
    if (this._closeEmitted) return;
    this._closeEmitted = true;
    this.emit("close");
  };
  IncomingMessage.prototype.setTimeout = function (ms, cb) {
    if (this.req) this.req.setTimeout(ms, cb);
    else if (cb) this.once("timeout", cb);
    return this;
  };

  function ClientRequest(input, options, cb) {
    // Not destroyed once its body is written, as a Writable would be: a
    // request lives on until its response (Node's is no Writable at all).
    Writable.call(this, { emitClose: false, autoDestroy: false });
    if (typeof input === "string" || input instanceof URL) {
      const parsed = typeof input === "string" ? new URL(input) : input;
      const fromUrl = {
        protocol: parsed.protocol,
        hostname: parsed.hostname,
        port: parsed.port,
        path: parsed.pathname + parsed.search,
        auth: parsed.username ? decodeURIComponent(parsed.username) + ":" + decodeURIComponent(parsed.password) : undefined,
      };
      if (typeof options === "function") [cb, options] = [options, undefined];
      options = { ...fromUrl, ...options };
    } else {
      if (typeof options === "function") [cb, options] = [options, undefined];
      options = { ...input, ...options };
    }
    const protocol = options.protocol || defaultProtocol;
    if (protocol !== "http:" && protocol !== "https:") {
      const err = new TypeErrorCtor(`Protocol "${protocol}" not supported. Expected "${defaultProtocol}"`);
      err.code = "ERR_INVALID_PROTOCOL";
      throw err;
    }
    let host = options.hostname || options.host || "localhost";
    // `host` may carry a port ("example.com:8080"); brackets stay on IPv6.
    if (!options.hostname && typeof options.host === "string") {
      const m = /^(.*?)(?::(\d+))?$/.exec(options.host);
      if (m && m[1] && m[1][0] !== "[" && StringPrototypeIndexOf(m[1], ":") === -1) {
        host = m[1];
        if (m[2] && !options.port) options.port = m[2];
      }
    }
    if (StringPrototypeIndexOf(host, ":") !== -1 && host[0] !== "[") host = "[" + host + "]";
    const port = options.port ? ":" + options.port : "";
    this.method = StringPrototypeToUpperCase(StringCtor(options.method || "GET"));
    this.path = requestPath(options.path);
    // The URL below is parsed again by the egress: nothing in the host or
    // port may make it name another host (`user@`, a path, a query).
    if (/[\s/\\@?#]/.test(host) || !/^(:\d*)?$/.test(port)) {
      const err = new TypeErrorCtor(`Invalid host: ${JSONStringify(host + port)}`);
      err.code = "ERR_INVALID_ARG_VALUE";
      throw err;
    }
    this.host = host;
    this.protocol = protocol;
    this._port = options.port || (protocol === "https:" ? 443 : 80);
    this._url = protocol + "//" + host + port + this.path;
    this._headers = {};
    this._mode = null;
    this._wrote = false;
    this._full = null;
    this._rid = 0;
    this._idle = 0;
    this._timer = null;
    this._closeEmitted = false;
    this.res = null;
    this.aborted = false;
    this.finished = false;
    this.reusedSocket = false;
    this.maxHeadersCount = null;
    this.socket = this.connection = null;
    const headers = options.headers;
    if (ArrayIsArray(headers)) {
      for (let i = 0; i + 1 < headers.length; i += 2) this.setHeader(headers[i], headers[i + 1]);
    } else if (headers) {
      const keys = ObjectKeys(headers);
      for (let i = 0; i < keys.length; i++) {
        if (headers[keys[i]] !== undefined) this.setHeader(keys[i], headers[keys[i]]);
      }
    }
    if (options.auth && !this.getHeader("authorization")) {
      this.setHeader("Authorization", "Basic " + Buffer.from(options.auth).toString("base64"));
    }
    if (typeof options.timeout === "number") this.setTimeout(options.timeout);
    if (typeof cb === "function") this.once("response", cb);
    const signal = options.signal;
    if (signal !== undefined && signal !== null) {
      const onAbort = () => {
        const err = new Error("The operation was aborted");
        err.name = "AbortError";
        err.code = "ABORT_ERR";
        err.cause = signal.reason;
        this.destroy(err);
      };
      if (signal.aborted) nextTick(onAbort);
      else {
        signal.addEventListener("abort", onAbort, { once: true });
        this.once("close", () => signal.removeEventListener("abort", onAbort));
      }
    }
    // The socket is "assigned" on the next tick, as an agent's would be.
    nextTick(() => {
      if (this.destroyed) return;
      this.socket = this.connection = new Socket(this);
      this.emit("socket", this.socket);
      this._arm();
    });
  }
  inherits(ClientRequest, Writable);
  Object.defineProperty(ClientRequest.prototype, "headersSent", {
    get() {
      return this._mode !== null;
    },
  });
  ClientRequest.prototype.setHeader = function (name, value) {
    if (this._mode !== null) {
      const err = new Error("Cannot set headers after they are sent to the client");
      err.code = "ERR_HTTP_HEADERS_SENT";
      throw err;
    }
    this._headers[StringPrototypeToLowerCase(StringCtor(name))] = [name, value];
    return this;
  };
  ClientRequest.prototype.getHeader = function (name) {
    const h = this._headers[StringPrototypeToLowerCase(StringCtor(name))];
    return h === undefined ? undefined : h[1];
  };
  ClientRequest.prototype.getHeaders = function () {
    const out = {};
    for (const key of ObjectKeys(this._headers)) out[key] = this._headers[key][1];
    return out;
  };
  ClientRequest.prototype.getHeaderNames = function () {
    return ObjectKeys(this._headers);
  };
  ClientRequest.prototype.getRawHeaderNames = function () {
    const out = [];
    for (const key of ObjectKeys(this._headers)) ArrayPrototypePush(out, this._headers[key][0]);
    return out;
  };
  ClientRequest.prototype.hasHeader = function (name) {
    return this._headers[StringPrototypeToLowerCase(StringCtor(name))] !== undefined;
  };
  ClientRequest.prototype.removeHeader = function (name) {
    if (this._mode !== null) {
      const err = new Error("Cannot remove headers after they are sent to the client");
      err.code = "ERR_HTTP_HEADERS_SENT";
      throw err;
    }
    delete this._headers[StringPrototypeToLowerCase(StringCtor(name))];
  };
  ClientRequest.prototype.flushHeaders = function () {
    if (this._mode === null && !this.destroyed) this._start("stream", null);
  };
  ClientRequest.prototype.setNoDelay = function () {};
  ClientRequest.prototype.setSocketKeepAlive = function () {};
  /// Node's socket timeout: 'timeout' once the exchange has been idle (no
  /// byte either way) for `ms`; 0 turns it off. The request goes on unless
  /// a listener ends it.
  ClientRequest.prototype.setTimeout = function (ms, cb) {
    if (cb) this.once("timeout", cb);
    this._setIdle(ms);
    return this;
  };
  ClientRequest.prototype._setIdle = function (ms) {
    const n = Number(ms);
    if (!(n >= 0)) {
      const err = new RangeError(`The value of "msecs" is out of range. It must be a non-negative finite number. Received ${ms}`);
      err.code = "ERR_OUT_OF_RANGE";
      throw err;
    }
    this._idle = n;
    this._arm();
  };
  ClientRequest.prototype._arm = function () {
    if (this._timer !== null) guest.clearTimeout(this._timer);
    this._timer = null;
    if (this._idle > 0 && this.socket !== null && !this._closeEmitted) {
      this._timer = guest.setTimeout(() => {
        this._timer = null;
        this.socket.emit("timeout");
        this.emit("timeout");
      }, this._idle);
    }
  };
  /// A byte went either way: the idle time starts over.
  ClientRequest.prototype._activity = function () {
    if (this._idle > 0) this._arm();
  };
  ClientRequest.prototype.write = function (chunk, encoding, cb) {
    this._wrote = true;
    return Writable.prototype.write.call(this, chunk, encoding, cb);
  };
  ClientRequest.prototype.end = function (chunk, encoding, cb) {
    if (typeof chunk === "function") [cb, chunk, encoding] = [chunk, null, null];
    else if (typeof encoding === "function") [cb, encoding] = [encoding, null];
    // A body given whole to end() goes out with a content-length.
    if (chunk !== null && chunk !== undefined && this._mode === null && !this._wrote) {
      this._full = typeof chunk === "string" ? Buffer.from(chunk, encoding || "utf8") : Buffer.from(chunk);
      chunk = null;
    }
    // Node's `finished`: end() was called (not that the body went out).
    this.finished = true;
    if (chunk !== null && chunk !== undefined) return Writable.prototype.end.call(this, chunk, encoding, cb);
    return Writable.prototype.end.call(this, cb);
  };
  ClientRequest.prototype._write = function (chunk, encoding, cb) {
    if (this._mode === null) this._start("stream", null);
    const rid = this._rid;
    if (rid === 0) return cb();
    const bytes = typeof chunk === "string" ? Buffer.from(chunk, encoding) : chunk;
    PromisePrototypeThen(egress.write(rid, new Uint8ArrayCtor(bytes.buffer, bytes.byteOffset, bytes.byteLength)), () => {
      this._activity();
      cb();
    }, (e) => {
      // Past the body limit or the ArrayBuffer limit is this request's
      // error (never a chunk dropped from a body that still ends as
      // whole); an upstream that stopped reading says why through the
      // response.
      if (e.code === "egress_limit" || e.code === "arraybuffer_limit") cb(exchangeError(e, this));
      else cb();
    });
  };
  ClientRequest.prototype._final = function (cb) {
    // Flushed on the next tick, as Node's request is: one destroyed in the
    // tick it was ended in sends nothing more (and has no 'finish').
    nextTick(() => {
      if (this.destroyed) return;
      if (this._mode === null) this._start("full", this._full);
      else if (this._rid !== 0) egress.finish(this._rid);
      cb();
    });
  };
  /// Sends the head: `mode` "full" with the whole body, "stream" with the
  /// body to follow.
  ClientRequest.prototype._start = function (mode, body) {
    this._mode = mode;
    const headers = [];
    let framed = false;
    for (const key of ObjectKeys(this._headers)) {
      const { 1: value } = this._headers[key];
      if (key === "content-length" || key === "transfer-encoding") framed = true;
      if (ArrayIsArray(value)) for (let i = 0; i < value.length; i++) ArrayPrototypePush(headers, [key, StringCtor(value[i])]);
      else ArrayPrototypePush(headers, [key, StringCtor(value)]);
    }
    const length = body === null ? 0 : body.length;
    if (mode === "full" && !framed && (length > 0 || !ArrayPrototypeIncludes(NO_DEFAULT_BODY, this.method))) {
      ArrayPrototypePush(headers, ["content-length", StringCtor(length)]);
    }
    const bytes = body === null ? undefined : new Uint8ArrayCtor(body.buffer, body.byteOffset, body.byteLength);
    let rid;
    try {
      rid = egress.start(this._url, this.method, headers, mode === "full" ? egress.BODY_FULL : egress.BODY_STREAM, bytes);
    } catch (e) {
      nextTick(() => this.destroy(exchangeError(e, this)));
      return;
    }
    this._rid = rid;
    this._activity();
    PromisePrototypeThen(egress.head(rid), (head) => this._response(head), (e) => {
      if (this._rid !== rid) return;
      this._rid = 0;
      if (e.code !== "aborted") this.destroy(exchangeError(e, this));
    });
  };
  ClientRequest.prototype._response = function (head) {
    const rid = this._rid;
    if (rid === 0 || this.destroyed) return;
    this._rid = 0;
    this._activity();
    const res = new IncomingMessage({ status: head.status, headers: head.headers, rid }, this);
    this.res = res;
    res.once("end", () =>
      nextTick(() => {
        this._emitClose();
        res._emitClose();
      })
    );
    // Nobody listening: the body is read and dropped, as in Node.
    if (!this.emit("response", res)) res.resume();
  };
  ClientRequest.prototype.abort = function () {
    if (this.aborted) return;
    this.aborted = true;
    nextTick(() => this.emit("abort"));
    this.destroy();
  };
  ClientRequest.prototype._destroy = function (err, cb) {
    const rid = this._rid;
    this._rid = 0;
    if (rid !== 0) egress.abort(rid);
    const res = this.res;
    let error = err;
    if (res !== null) {
      // After the response: it is the response that ends unfinished.
      if (!res.complete && !res.destroyed) {
        const resRid = res._rid;
        res._rid = 0;
        if (resRid !== 0) egress.abort(resRid);
        res._abort(connReset("aborted"));
      }
    } else if (error === null && !(this.aborted && this.socket === null)) {
      error = connReset("socket hang up");
    }
    cb(error);
    nextTick(() => this._emitClose());
  };
  ClientRequest.prototype._emitClose = function () {
    if (this._closeEmitted) return;
    this._closeEmitted = true;
    if (this._timer !== null) guest.clearTimeout(this._timer);
    this._timer = null;
    this.emit("close");
  };

  function request(input, options, cb) {
    return new ClientRequest(input, options, cb);
  }
  function get(input, options, cb) {
    const req = request(input, options, cb);
    req.end();
    return req;
  }
  function createServer() {
    throw unavailableError(
      `${defaultProtocol === "https:" ? "https" : "http"}.createServer`,
      "a webtask answers through its function (context, req, res) and cannot listen",
    );
  }
  const globalAgent = new Agent();
  return {
    Agent,
    ClientRequest,
    IncomingMessage,
    METHODS,
    STATUS_CODES,
    globalAgent,
    request,
    get,
    createServer,
    Server: createServer,
    ServerResponse,
    maxHeaderSize: 16384,
    validateHeaderName() {},
    validateHeaderValue() {},
  };
}

registerBuiltin("http", () => createHttp("http:"));
registerBuiltin("https", () => createHttp("https:"));
