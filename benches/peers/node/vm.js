"use strict";
// Node peer, "naive sandbox" model: every request gets a fresh vm context in
// which the hello function's source is compiled and run, and its result is
// the response. The source is the webtask hello (benches/common/mod.rs HELLO).
const http = require("http");
const vm = require("vm");

const HELLO = 'return function (context, cb) { cb(null, "Hello, " + context.data.name); }';
const WRAPPED = "(function () {\n" + HELLO + "\n})()";
const port = Number(process.env.PORT || 8080);

function reply(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const name = new URL(req.url, "http://127.0.0.1").searchParams.get("name");
  try {
    const context = vm.createContext({});
    const script = new vm.Script(WRAPPED, { filename: "hello.js" });
    const fn = script.runInContext(context, { timeout: 1000 });
    let done = false;
    fn({ data: { name } }, (err, result) => {
      if (done) return;
      done = true;
      if (err) reply(res, 500, { error: String(err) });
      else reply(res, 200, result);
    });
  } catch (err) {
    reply(res, 500, { error: String(err) });
  }
});
server.keepAliveTimeout = 65000;
server.listen(port, "127.0.0.1");
