// A small blocking HTTP client over `wasi:http/outgoing-handler`.
//
// Every request goes through warden's egress: the operator's `grants.http` decide, per
// request, whether it may leave (a refused one throws ToolError("upstream", ...)), and
// secret placeholders (`secretPlaceholder`) are swapped for their values there, only
// toward the grant's hosts. Redirects are never followed implicitly.

import { handle } from "wasi:http/outgoing-handler@0.2.12";
import { Fields, OutgoingBody, OutgoingRequest } from "wasi:http/types@0.2.12";
import { ToolError } from "./warden.js";

const METHODS = new Set(["get", "head", "post", "put", "delete", "options", "patch"]);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function describe(e) {
  const p = e && e.payload !== undefined ? e.payload : e;
  if (p && p.tag) return p.val !== undefined && typeof p.val !== "object" ? `${p.tag} (${p.val})` : p.tag;
  return String(e);
}

function dispose(resource) {
  const drop = resource && resource[Symbol.dispose];
  if (drop) drop.call(resource);
}

/** Send one request; read at most `maxBody` bytes of the response body. */
export function request(method, url, { headers = {}, body, maxBody = 1 << 20 } = {}) {
  let scheme;
  let rest;
  if (url.startsWith("https://")) [scheme, rest] = [{ tag: "HTTPS" }, url.slice(8)];
  else if (url.startsWith("http://")) [scheme, rest] = [{ tag: "HTTP" }, url.slice(7)];
  else throw new ToolError("invalid-input", `unsupported URL ${JSON.stringify(url)}: only http:// and https://`);
  const slash = rest.indexOf("/");
  const [authority, path] = slash < 0 ? [rest, "/"] : [rest.slice(0, slash), rest.slice(slash)];
  const bytes = body === undefined ? undefined : typeof body === "string" ? encoder.encode(body) : body;

  let result;
  try {
    const fields = Fields.fromList(Object.entries(headers).map(([k, v]) => [k, encoder.encode(String(v))]));
    const req = new OutgoingRequest(fields);
    const tag = method.toLowerCase();
    req.setMethod(METHODS.has(tag) ? { tag } : { tag: "other", val: method.toUpperCase() });
    req.setScheme(scheme);
    req.setAuthority(authority);
    req.setPathWithQuery(path);
    const outgoing = bytes === undefined ? undefined : req.body();
    // Send first, then write: the host may read the body while the request is in flight.
    const pending = handle(req, undefined);
    if (outgoing !== undefined) {
      const stream = outgoing.write();
      for (let i = 0; i < bytes.length; i += 4096) stream.blockingWriteAndFlush(bytes.subarray(i, i + 4096));
      dispose(stream);
      OutgoingBody.finish(outgoing, undefined);
    }
    pending.subscribe().block();
    result = pending.get();
  } catch (e) {
    throw new ToolError("upstream", `${method} ${url}: ${describe(e)}`);
  }
  if (result === undefined || result.tag === "err") throw new ToolError("upstream", `${method} ${url}: no response`);
  if (result.val.tag === "err") throw new ToolError("upstream", `${method} ${url}: ${describe(result.val.val)}`);
  const response = result.val.val;

  const status = response.status();
  const got = response.headers().entries().map(([k, v]) => [k, decoder.decode(v)]);
  const incoming = response.consume();
  const stream = incoming.stream();
  const chunks = [];
  let size = 0;
  let truncated = false;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(65536n);
    } catch (e) {
      if (describe(e) === "closed") break;
      throw new ToolError("upstream", `${method} ${url}: reading the body failed`);
    }
    if (size + chunk.length > maxBody) {
      chunks.push(chunk.subarray(0, maxBody - size));
      truncated = true;
      break;
    }
    chunks.push(chunk);
    size += chunk.length;
  }
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return {
    status,
    headers: got,
    body: all,
    truncated,
    header: (name) => (got.find(([k]) => k.toLowerCase() === name.toLowerCase()) || [])[1],
    text: () => decoder.decode(all),
    json: () => JSON.parse(decoder.decode(all)),
  };
}

export const get = (url, options = {}) => request("GET", url, options);
