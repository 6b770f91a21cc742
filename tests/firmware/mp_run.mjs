// Runs a MicroPython script in the WebAssembly port under Node.
// stdin: JSON {files: {path: base64}, script: "..."}; argv[2]: the package's directory.
// Exit status 0 when the script ran to the end, 1 on an uncaught exception.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const pkg = process.argv[2];
const { loadMicroPython } = await import(pathToFileURL(path.join(pkg, "micropython.mjs")).href);
const spec = JSON.parse(readFileSync(0, "utf8"));
const mp = await loadMicroPython({
  heapsize: 1024 * 1024,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
for (const [file, b64] of Object.entries(spec.files)) {
  const parts = file.split("/").filter(Boolean);
  let dir = "";
  for (const p of parts.slice(0, -1)) {
    dir += "/" + p;
    try { mp.FS.mkdir(dir); } catch (e) { /* exists */ }
  }
  mp.FS.writeFile(file, Buffer.from(b64, "base64"));
}
try {
  mp.runPython(spec.script);
} catch (e) {
  process.stderr.write(String(e.message || e) + "\n");
  process.exit(1);
}
