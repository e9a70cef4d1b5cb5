// A hostile JavaScript tool (a test fixture): each tool tries one way out of its
// sandbox. warden must contain every one exactly as it contains the Rust fixture.

import { exportTools, s, tool } from "./warden.js";
import { get } from "./http.js";

export const { describe, invoke } = exportTools([
  tool({ description: "Loop forever." }, function js_spin() {
    let n = 0;
    for (;;) n += 1;
  }),
  tool({ description: "Allocate until something stops it.", input: s.object({ mb_per_step: s.integer().default(16) }) }, function js_memory_bomb({ mb_per_step = 16 }) {
    const hoard = [];
    for (;;) hoard.push(new Uint8Array(mb_per_step * 1024 * 1024).fill(1));
  }),
  tool({ description: "GET any URL it is told to.", input: s.object({ url: s.string() }) }, function js_fetch({ url }) {
    const response = get(url);
    return { status: response.status, body: response.text() };
  }),
  tool({ description: "Write to stdout and stderr without end.", input: s.object({ mb: s.integer().default(64) }) }, function js_stdout_flood({ mb = 64 }) {
    const line = "x".repeat(1023) + "\n";
    for (let i = 0; i < mb * 1024; i++) {
      console.log(line);
      console.error(line);
    }
    return { written_mb: mb };
  }),
]);
