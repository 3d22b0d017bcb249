// Node's `url` module: the legacy API (parse, format, resolve) from the
// npm polyfill, with what Node 20 adds to it: the WHATWG classes (the same
// objects as the globals), domainToASCII/domainToUnicode, the file URL
// helpers and urlToHttpOptions. Each behaves as Node 20's, checked against
// it input by input (tests/it/node.rs).
"use strict";

const legacy = require("url/");
const whatwg = require("whatwg-url");
const tr46 = require("tr46");
const { argType, coded } = require("./node-errors.js");

// Node answers "" for a domain its URL parser would refuse as a host.
// Node parses it as the host of "ws://x" (a special scheme, as the host
// parser wants); so does this, on whatwg-url's URL record. A host it
// leaves as it was is one it refused: "X" cannot be a parsed host, which
// is always lowercase.
function parsedHost(domain) {
  const input = `${domain}`;
  if (input === "") return null;
  const url = whatwg.basicURLParse("ws://x");
  url.host = "X";
  const parsed = whatwg.basicURLParse(input, { url, stateOverride: "hostname" });
  if (parsed === null || url.host === "X") return null;
  return whatwg.serializeHost(url.host);
}

function domainToASCII(domain) {
  if (arguments.length < 1) throw missingArgs("domain");
  return parsedHost(domain) ?? "";
}

function domainToUnicode(domain) {
  if (arguments.length < 1) throw missingArgs("domain");
  const host = parsedHost(domain);
  if (host === null) return "";
  const { domain: unicode, error } = tr46.toUnicode(host, {
    checkHyphens: false,
    checkBidi: true,
    checkJoiners: true,
    useSTD3ASCIIRules: false,
  });
  return error ? "" : unicode;
}

function fileURLToPath(path) {
  let url = path;
  if (typeof path === "string") url = new whatwg.URL(path);
  else if (!(path instanceof whatwg.URL)) {
    throw argType("path", "of type string or an instance of URL", path);
  }
  if (url.protocol !== "file:") throw coded(TypeError, "ERR_INVALID_URL_SCHEME", "The URL must be of scheme file");
  if (url.hostname !== "") throw coded(TypeError, "ERR_INVALID_FILE_URL_HOST", 'File URL host must be "localhost" or empty on linux');
  const pathname = url.pathname;
  if (/%2f/i.test(pathname)) {
    throw coded(TypeError, "ERR_INVALID_FILE_URL_PATH", "File URL path must not include encoded / characters");
  }
  return decodeURIComponent(pathname);
}

// A webtask's working directory is "/" (process.cwd()).
function pathToFileURL(filepath) {
  if (typeof filepath !== "string") {
    throw argType("path", "of type string", filepath);
  }
  let resolved = require("path-browserify").resolve("/", filepath);
  if (filepath.endsWith("/") && !resolved.endsWith("/")) resolved += "/";
  const url = new whatwg.URL("file://");
  // What the pathname setter would keep as it is, but Node 20.20 encodes
  // (checked against it for every ASCII character).
  url.pathname = resolved.replace(/[%\\\n\r\t#?[\]^|~]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0"));
  return url;
}

function urlToHttpOptions(url) {
  const { hostname, pathname, port, username, password, search } = url;
  const options = {
    __proto__: null,
    ...url,
    protocol: url.protocol,
    hostname: hostname && hostname.startsWith("[") ? hostname.slice(1, -1) : hostname,
    hash: url.hash,
    search,
    pathname,
    path: `${pathname || ""}${search || ""}`,
    href: url.href,
  };
  if (port !== "") options.port = Number(port);
  if (username || password) options.auth = `${decodeURIComponent(username)}:${decodeURIComponent(password)}`;
  return options;
}

function missingArgs(name) {
  return coded(TypeError, "ERR_MISSING_ARGS", `The "${name}" argument must be specified`);
}

module.exports = {
  ...legacy,
  URL: whatwg.URL,
  URLSearchParams: whatwg.URLSearchParams,
  domainToASCII,
  domainToUnicode,
  fileURLToPath,
  pathToFileURL,
  urlToHttpOptions,
};
