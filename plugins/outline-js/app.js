// `md_outline` turns a Markdown document into its outline (headings as a tree, links,
// code blocks, words); `fetch_text` reads a page on a granted host, optionally with a
// secret the plugin never sees. Written with warden's JavaScript SDK.

import { exportTools, log, s, secretPlaceholder, tool, ToolError } from "./warden.js";
import { get } from "./http.js";

const heading = s.object({
  level: s.integer({ min: 1, max: 6 }),
  text: s.string(),
  line: s.integer({ min: 1 }).describe("1-based line of the heading."),
});

const mdOutline = tool(
  {
    title: "Markdown outline",
    description: "Outline a Markdown document: its headings (level, text, line), links, fenced code blocks and word count.",
    readOnly: true,
    idempotent: true,
    input: s.object({
      markdown: s.string({ maxLength: 1048576 }).describe("The Markdown document."),
      max_level: s.integer({ min: 1, max: 6 }).default(6).describe("Deepest heading level to list."),
    }),
    output: s.object({
      title: s.nullable(s.string()).describe("The first level-1 heading, if any."),
      headings: s.array(heading),
      links: s.array(s.object({ text: s.string(), url: s.string() })),
      code_blocks: s.integer({ min: 0 }),
      words: s.integer({ min: 0 }),
    }),
  },
  function md_outline({ markdown, max_level = 6 }) {
    const headings = [];
    const links = [];
    let codeBlocks = 0;
    let words = 0;
    let fenced = false;
    markdown.split("\n").forEach((line, i) => {
      if (/^\s*(```|~~~)/.test(line)) {
        if (!fenced) codeBlocks += 1;
        fenced = !fenced;
        return;
      }
      if (fenced) return;
      const h = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
      if (h && h[1].length <= max_level) headings.push({ level: h[1].length, text: h[2], line: i + 1 });
      for (const m of line.matchAll(/\[([^\]]*)\]\(([^)\s]+)\)/g)) links.push({ text: m[1], url: m[2] });
      words += line.split(/\s+/).filter((w) => /\w/.test(w)).length;
    });
    if (fenced) throw new ToolError("invalid-input", "a fenced code block is never closed");
    const first = headings.find((h) => h.level === 1);
    log("info", "outlined", { headings: headings.length });
    return { title: first ? first.text : null, headings, links, code_blocks: codeBlocks, words };
  },
);

const fetchText = tool(
  {
    title: "Fetch a page",
    description: "GET a URL on a host the operator granted and return its status and text (first 256 KiB), optionally sending a granted secret as a bearer token the plugin never sees.",
    readOnly: true,
    openWorld: true,
    input: s.object({
      url: s.string({ pattern: "^https?://", maxLength: 2048 }),
      token_secret: s.string().optional().describe("The name of a granted secret to send as `Authorization: Bearer`."),
    }),
    output: s.object({ status: s.integer(), content_type: s.nullable(s.string()), body: s.string(), truncated: s.boolean() }),
  },
  function fetch_text({ url, token_secret }) {
    const headers = { accept: "text/*, application/json" };
    if (token_secret) headers.authorization = `Bearer ${secretPlaceholder(token_secret)}`;
    const response = get(url, { headers, maxBody: 256 * 1024 });
    return { status: response.status, content_type: response.header("content-type") ?? null, body: response.text(), truncated: response.truncated };
  },
);

export const { describe, invoke } = exportTools([mdOutline, fetchText]);
