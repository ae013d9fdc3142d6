// One upload with tus-js-client under Node, timed.
//
//   node benchmarks/upload_js.mjs <endpoint> <file> <chunkSize|Infinity> '<headers JSON>'
//
// Prints one JSON line: {"seconds": <elapsed from start() to onSuccess>, "url": <upload URL>}.
// Retries are off so that a failure shows. tus-js-client comes from benchmarks/.work/node
// (TUS_NODE_DIR overrides that folder).
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.TUS_NODE_DIR || path.join(here, ".work", "node");
const require = createRequire(path.join(nodeDir, "package.json"));
const tus = require("tus-js-client");

const [endpoint, file, chunkArg, headersArg] = process.argv.slice(2);
if (!endpoint || !file || !chunkArg) {
  console.error("usage: upload_js.mjs <endpoint> <file> <chunkSize|Infinity> [headers JSON]");
  process.exit(2);
}
const chunkSize = chunkArg === "Infinity" ? Infinity : Number(chunkArg);
const headers = headersArg ? JSON.parse(headersArg) : {};

const started = process.hrtime.bigint();
const upload = new tus.Upload(fs.createReadStream(file), {
  endpoint,
  headers,
  chunkSize,
  retryDelays: null,
  metadata: { filename: path.basename(file) },
  onError: (err) => {
    console.error(String((err && err.stack) || err));
    process.exit(1);
  },
  onSuccess: () => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(JSON.stringify({ seconds, url: upload.url }));
  },
});
upload.start();
