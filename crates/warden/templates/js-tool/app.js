// `{{snake}}`: a warden tool in JavaScript. Its input and output schemas are built
// with `s` below, so the schema agents see is the one the code reads.

import { exportTools, s, tool, ToolError } from "./warden.js";

const {{camel}} = tool(
  {
    description: "Greet someone (replace this with what your tool does: agents read this text).",
    readOnly: true,
    idempotent: true,
    input: s.object({
      name: s.string({ minLength: 1, maxLength: 100 }).describe("Who to greet."),
      times: s.integer({ min: 1, max: 10 }).default(1).describe("How many times."),
    }),
    output: s.object({ greeting: s.string() }),
  },
  function {{snake}}({ name, times = 1 }) {
    if (!name.trim()) throw new ToolError("invalid-input", "the name is blank");
    return { greeting: Array(times).fill(`Hello, ${name}!`).join(" ") };
  },
);

export const { describe, invoke } = exportTools([{{camel}}]);
