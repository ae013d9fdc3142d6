// The peer for the benchmarks: @tus/server with @tus/file-store, as its README shows it.
//
//   node benchmarks/tus_node_server.mjs <port> <directory>
//
// Listens on 127.0.0.1:<port>, tus endpoint /files/, no auth; stores uploads as
// <directory>/<id> (+ <id>.json). Prints "listening <port>" once ready.
// The packages come from benchmarks/.work/node (run.py installs them there);
// TUS_NODE_DIR overrides that folder.
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.TUS_NODE_DIR || path.join(here, ".work", "node");
const require = createRequire(path.join(nodeDir, "package.json"));
const load = (name) => import(pathToFileURL(require.resolve(name)).href);

const { Server } = await load("@tus/server");
const { FileStore } = await load("@tus/file-store");

const [portArg, directory] = process.argv.slice(2);
if (!portArg || !directory) {
  console.error("usage: tus_node_server.mjs <port> <directory>");
  process.exit(2);
}

const tus = new Server({ path: "/files", datastore: new FileStore({ directory }) });
const server = http.createServer((req, res) => tus.handle(req, res));
server.listen(Number(portArg), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});

const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
