"use strict";
// Node peer, process-per-request model: every request spawns a fresh
// `node -e <hello source>` child, passing the name (JSON-encoded) as argv[1];
// the child prints the function's result as JSON on stdout, which becomes the
// response body. The source is the webtask hello (benches/common/mod.rs HELLO).
const http = require("http");
const { execFile } = require("child_process");

const HELLO = 'return function (context, cb) { cb(null, "Hello, " + context.data.name); }';
const CHILD =
  "const fn = new Function(" + JSON.stringify(HELLO) + ")();\n" +
  "fn({ data: { name: JSON.parse(process.argv[1]) } }, (err, result) => {\n" +
  "  if (err) { process.stderr.write(String(err)); process.exit(1); }\n" +
  "  process.stdout.write(JSON.stringify(result));\n" +
  "});\n";
const port = Number(process.env.PORT || 8080);

function send(res, status, body) {
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const name = new URL(req.url, "http://127.0.0.1").searchParams.get("name");
  execFile(
    process.execPath,
    ["-e", CHILD, JSON.stringify(name)],
    { timeout: 10000, maxBuffer: 1 << 20, env: {} },
    (err, stdout, stderr) => {
      if (err) send(res, 500, JSON.stringify({ error: String(err), stderr: String(stderr) }));
      else send(res, 200, stdout);
    },
  );
});
server.keepAliveTimeout = 65000;
server.listen(port, "127.0.0.1");
