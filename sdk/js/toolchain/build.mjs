// node build.mjs SOURCE WIT_DIR WORLD OUT: componentize SOURCE (an ES module; relative
// imports resolve beside it) against WORLD in WIT_DIR into the component OUT.
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";

const [sourcePath, witPath, worldName, out] = process.argv.slice(2);
if (!out) {
  console.error("usage: node build.mjs SOURCE WIT_DIR WORLD OUT");
  process.exit(2);
}
const { component } = await componentize({ sourcePath, witPath, worldName });
await writeFile(out, component);
