// lbsolo's Node example: answers / with its name and release, /up for health checks.
"use strict";

const http = require("http");
const os = require("os");

const release = process.env.LBSOLO_RELEASE || "dev";
const port = Number(process.env.PORT || 5000);

const server = http.createServer((req, res) => {
  let status = 200;
  let body = `lbsolo node example release=${release} hostname=${os.hostname()}\n`;
  if (req.url === "/up") {
    body = "ok\n";
  } else if (req.url !== "/") {
    status = 404;
    body = "not found\n";
  }
  res.writeHead(status, { "Content-Type": "text/plain; charset=utf-8", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
  console.log(`${req.method} ${req.url} ${status}`);
});

// Finish in-flight requests when lbsolo stops the container.
process.on("SIGTERM", () => server.close(() => process.exit(0)));

server.listen(port, "0.0.0.0", () => console.log(`node example ${release} listening on :${port}`));
