// Write warden tools in JavaScript (built into components by componentize-js).
//
//   import { tool, s, exportTools, ToolError } from "./warden.js";
//
//   const wordCount = tool({
//     description: "Count the words of a text.",
//     readOnly: true,
//     input: s.object({ text: s.string({ maxLength: 65536 }).describe("The text to count.") }),
//     output: s.object({ words: s.integer() }),
//   }, function word_count({ text }) {
//     return { words: text.split(/\s+/).filter(Boolean).length };
//   });
//
//   export const { describe, invoke } = exportTools([wordCount]);
//
// A tool's input and output schemas are built with `s` (JSON Schema draft 2020-12, the
// way zod describes a shape), so the schema an agent sees is the one the code reads.
// warden validates input against it before any policy or the tool runs. Throw
// `new ToolError(code, message)` to fail on purpose; any other exception fails the call
// with code `exception`. Nothing here grants a capability: hosts and secrets come only
// from the operator's grants.

import { log as witLog } from "warden:plugin/log@0.1.0";
import { progress as witProgress, revealSecret as witReveal, secretPlaceholder as witPlaceholder } from "warden:plugin/host@0.1.0";

export class ToolError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
  }
}

class Schema {
  constructor(json, optional = false) {
    this.json = json;
    this.isOptional = optional;
  }
  describe(text) {
    return new Schema({ ...this.json, description: text }, this.isOptional);
  }
  default(value) {
    return new Schema({ ...this.json, default: value }, true);
  }
  optional() {
    return new Schema(this.json, true);
  }
}

function bounds(extra, names) {
  const out = {};
  for (const [from, to] of names) {
    if (extra && extra[from] !== undefined) out[to] = extra[from];
  }
  if (extra && extra.description) out.description = extra.description;
  return out;
}

/** Schema builders: each returns a Schema; `.describe()`, `.default()`, `.optional()` refine it. */
export const s = {
  string: (o) => new Schema({ type: "string", ...bounds(o, [["minLength", "minLength"], ["maxLength", "maxLength"], ["pattern", "pattern"], ["format", "format"]]) }),
  integer: (o) => new Schema({ type: "integer", ...bounds(o, [["min", "minimum"], ["max", "maximum"]]) }),
  number: (o) => new Schema({ type: "number", ...bounds(o, [["min", "minimum"], ["max", "maximum"]]) }),
  boolean: (o) => new Schema({ type: "boolean", ...bounds(o, []) }),
  enum: (values, o) => new Schema({ enum: [...values], ...bounds(o, []) }),
  array: (items, o) => new Schema({ type: "array", items: items.json, ...bounds(o, [["minItems", "minItems"], ["maxItems", "maxItems"]]) }),
  record: (values, o) => new Schema({ type: "object", additionalProperties: values.json, ...bounds(o, []) }),
  nullable: (inner) => new Schema({ anyOf: [inner.json, { type: "null" }] }, inner.isOptional),
  object: (shape, o) => {
    const properties = {};
    const required = [];
    for (const [key, schema] of Object.entries(shape)) {
      properties[key] = schema.json;
      if (!schema.isOptional) required.push(key);
    }
    const json = { type: "object", properties, additionalProperties: false, ...bounds(o, []) };
    if (required.length) json.required = required;
    return new Schema(json);
  },
};

/** A tool: `spec` names and describes it, `fn` takes the parsed input and returns JSON data. */
export function tool(spec, fn) {
  const name = spec.name || fn.name;
  if (!name) throw new TypeError("a tool needs a name (spec.name or a named function)");
  if (!spec.description) throw new TypeError(`${name}: a tool needs a description: it is what agents read`);
  if (spec.readOnly && spec.destructive) throw new TypeError(`${name}: a tool cannot be both readOnly and destructive`);
  const input = spec.input || s.object({});
  if (input.json.type !== "object") throw new TypeError(`${name}: the input schema must be an object`);
  const output = spec.output && spec.output.json.type === "object" ? spec.output.json : undefined;
  return {
    name,
    fn,
    spec: {
      name,
      title: spec.title,
      description: spec.description,
      inputSchema: JSON.stringify(input.json),
      outputSchema: output === undefined ? undefined : JSON.stringify(output),
      annotations: {
        readOnly: !!spec.readOnly,
        destructive: !!spec.destructive,
        idempotent: !!spec.idempotent,
        openWorld: !!spec.openWorld,
      },
    },
  };
}

function fail(code, message) {
  // componentize-js turns a thrown value with a `payload` into the `err` of a result.
  const e = new Error(`${code}: ${message}`);
  e.payload = { code, message };
  return e;
}

/** The `describe` and `invoke` exports for `tools`. */
export function exportTools(tools) {
  const byName = new Map();
  for (const t of tools) {
    if (byName.has(t.name)) throw new TypeError(`two tools named ${t.name}`);
    byName.set(t.name, t);
  }
  return {
    describe: () => tools.map((t) => t.spec),
    invoke: (name, raw) => {
      const t = byName.get(name);
      if (!t) throw fail("unknown-tool", `no tool named ${name}`);
      let input;
      try {
        input = JSON.parse(raw);
      } catch (e) {
        throw fail("invalid-input", String(e));
      }
      let result;
      try {
        result = t.fn(input);
      } catch (e) {
        if (e instanceof ToolError) throw fail(e.code, e.detail);
        // Out of memory is the host's limit, not the tool's error: rethrown as is, it
        // traps, so the call fails as `memory-limit` whatever language the tool is in.
        if (e === "out of memory" || (e instanceof Error && e.message === "out of memory")) throw e;
        throw fail("exception", `${e && e.name ? e.name : "Error"}: ${e && e.message ? e.message : String(e)}`);
      }
      return JSON.stringify(result === undefined ? null : result);
    },
  };
}

const LEVELS = new Set(["trace", "debug", "info", "warn", "error"]);

/** One line in the run's log (never the host's stdout). */
export function log(level, message, fields = {}) {
  witLog(LEVELS.has(level) ? level : "info", String(message), Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

function secretError(name) {
  return new ToolError("secret", `secret ${JSON.stringify(name)} is not granted to this plugin for this use`);
}

/** An opaque stand-in for granted secret `name`; warden swaps in the value at the egress,
 *  only in requests to the grant's hosts. The plugin never holds the value. */
export function secretPlaceholder(name) {
  try {
    return witPlaceholder(name);
  } catch {
    throw secretError(name);
  }
}

/** The value of `name`, only where its grant says `reveal = true` (audited). */
export function revealSecret(name) {
  try {
    return witReveal(name);
  } catch {
    throw secretError(name);
  }
}

export function progress(done, total, message) {
  witProgress(BigInt(done), total === undefined ? undefined : BigInt(total), message);
}
