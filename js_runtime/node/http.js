// Node's `http` and `https` clients over the node's egress (op_wt_fetch, the
// same way out as guest `fetch`: the node resolves, checks the address
// policy and connects; nothing here touches a socket). A ClientRequest
// collects its body and sends it at end(); the IncomingMessage is a
// Readable of the whole (size-capped) response. Redirects are not followed,
// as in Node. Servers are not available: a webtask answers through its
// function, never by listening.

import { builtin, registerBuiltin, unavailableError } from "ext:webtask_runtime/node/require.js";

const core = globalThis.Deno.core;
const { op_wt_fetch } = core.ops;
const { getAsyncContext } = core;
const {
  ArrayIsArray,
  ArrayPrototypePush,
  ObjectKeys,
  String: StringCtor,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  TypeError: TypeErrorCtor,
} = globalThis.__bootstrap.primordials;

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

/// One exchange through the egress; host errors ("<code>: <message>")
/// become guest Errors with `.code`.
export async function egress(url, method, headers, body) {
  const id = getAsyncContext();
  try {
    return await op_wt_fetch(typeof id === "number" ? id : 0, { url, method, headers, body });
  } catch (e) {
    const text = typeof e?.message === "string" ? e.message : "request failed";
    const at = StringPrototypeIndexOf(text, ": ");
    const err = new Error(at < 0 ? text : StringPrototypeSlice(text, at + 2));
    err.code = at < 0 ? "egress_failed" : StringPrototypeSlice(text, 0, at);
    throw err;
  }
}

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

function createHttp(defaultProtocol) {
  prepareServerResponse();
  const { Buffer } = builtin("buffer");
  const { Readable, Writable } = builtin("stream");
  const EventEmitter = builtin("events");
  const { inherits } = builtin("util");
  const urlModule = builtin("url");
  const nextTick = (fn, ...args) => queueMicrotask(() => fn(...args));

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

  function IncomingMessage(res, req) {
    Readable.call(this);
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
    this.socket = this.connection = null;
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
    this[BODY] = res.body;
  }
  inherits(IncomingMessage, Readable);
  IncomingMessage.prototype._read = function () {
    const body = this[BODY];
    if (body === null) return;
    this[BODY] = null;
    if (body.length > 0) this.push(Buffer.from(body.buffer, body.byteOffset, body.byteLength));
    this.complete = true;
    this.push(null);
  };
  IncomingMessage.prototype.setTimeout = function (ms, cb) {
    if (cb) this.once("timeout", cb);
    return this;
  };

  function ClientRequest(input, options, cb) {
    Writable.call(this);
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
    this.path = options.path || "/";
    this.host = host;
    this.protocol = protocol;
    this._url = protocol + "//" + host + port + this.path;
    this._headers = {};
    this._body = [];
    this._sent = false;
    this.aborted = false;
    this.finished = false;
    this.reusedSocket = false;
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
  }
  inherits(ClientRequest, Writable);
  ClientRequest.prototype.setHeader = function (name, value) {
    if (this._sent) {
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
  ClientRequest.prototype.hasHeader = function (name) {
    return this._headers[StringPrototypeToLowerCase(StringCtor(name))] !== undefined;
  };
  ClientRequest.prototype.removeHeader = function (name) {
    delete this._headers[StringPrototypeToLowerCase(StringCtor(name))];
  };
  ClientRequest.prototype.flushHeaders = function () {};
  ClientRequest.prototype.setNoDelay = function () {};
  ClientRequest.prototype.setSocketKeepAlive = function () {};
  ClientRequest.prototype.setTimeout = function (ms, cb) {
    if (cb) this.once("timeout", cb);
    return this;
  };
  ClientRequest.prototype._write = function (chunk, encoding, cb) {
    ArrayPrototypePush(this._body, typeof chunk === "string" ? Buffer.from(chunk, encoding) : Buffer.from(chunk));
    cb();
  };
  ClientRequest.prototype._final = function (cb) {
    cb();
    this._send();
  };
  ClientRequest.prototype.abort = function () {
    if (this.aborted) return;
    this.aborted = true;
    nextTick(() => this.emit("abort"));
    this.destroy();
  };
  ClientRequest.prototype._destroy = function (err, cb) {
    this.aborted = true;
    if (this.res && !this.res.complete) this.res.destroy();
    cb(err);
  };
  ClientRequest.prototype._send = function () {
    if (this._sent || this.aborted) return;
    this._sent = true;
    this.finished = true;
    const headers = [];
    for (const key of ObjectKeys(this._headers)) {
      const { 1: value } = this._headers[key];
      if (ArrayIsArray(value)) for (let i = 0; i < value.length; i++) ArrayPrototypePush(headers, [key, StringCtor(value[i])]);
      else ArrayPrototypePush(headers, [key, StringCtor(value)]);
    }
    const body = Buffer.concat(this._body);
    egress(this._url, this.method, headers, new Uint8Array(body.buffer, body.byteOffset, body.byteLength)).then(
      (res) => {
        if (this.aborted) return;
        const msg = new IncomingMessage(res, this);
        this.res = msg;
        if (!this.emit("response", msg)) msg.resume();
      },
      (err) => {
        if (!this.aborted) this.destroy(err);
      },
    );
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
