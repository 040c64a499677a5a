// The API reference page: renders this server's /api/openapi.json (OpenAPI 3.1) as HTML.
//
// Written for this server's own document, not as a general OpenAPI viewer: operations grouped
// by tag, each with its parameters, request body and responses, schemas shown as a compact
// outline with $refs to components resolved. Built with textContent only (the document is
// ours, but descriptions are text, not HTML).
"use strict";

const METHODS = ["get", "put", "post", "patch", "delete"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return { name, schema: doc.components.schemas[name] || {} };
  }
  return { name: null, schema: schema || {} };
}

function typeOf(schema) {
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  let type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "";
  if (schema.format) type += ` (${schema.format})`;
  return type;
}

function limits(schema) {
  const parts = [];
  if (schema.minLength !== undefined) parts.push(`min length ${schema.minLength}`);
  if (schema.maxLength !== undefined) parts.push(`max length ${schema.maxLength}`);
  if (schema.minimum !== undefined) parts.push(`≥ ${schema.minimum}`);
  if (schema.maximum !== undefined) parts.push(`≤ ${schema.maximum}`);
  if (schema.pattern) parts.push(`pattern ${schema.pattern}`);
  if (schema.default !== undefined) parts.push(`default ${JSON.stringify(schema.default)}`);
  return parts.join(", ");
}

// A schema as nested lists: one line per property, its type, limits and description.
function outline(doc, raw, depth = 0) {
  const { name, schema } = resolve(doc, raw);
  const variants = schema.oneOf || schema.anyOf;
  if (variants) {
    return el("ul", {}, ...variants.map((v) => el("li", {}, outline(doc, v, depth + 1))));
  }
  const head = el("span", {}, name ? el("code", {}, name) : "", name ? " " : "", typeOf(schema));
  const extra = limits(schema);
  const line = el("span", {}, head, extra ? ` — ${extra}` : "");
  if (depth > 4) return line;
  if (schema.type === "array" || (Array.isArray(schema.type) && schema.items)) {
    return el("span", {}, line, " of ", outline(doc, schema.items || {}, depth + 1));
  }
  const props = schema.properties;
  if (!props) return line;
  const required = new Set(schema.required || []);
  const items = Object.entries(props).map(([key, sub]) => {
    const { schema: inner } = resolve(doc, sub);
    return el(
      "li",
      {},
      el("code", {}, key),
      required.has(key) ? " (required) " : " ",
      outline(doc, sub, depth + 1),
      inner.description ? el("div", { class: "muted" }, inner.description) : null,
    );
  });
  return el("span", {}, line, el("ul", {}, ...items));
}

function operation(doc, method, path, op) {
  const id = op.operationId || `${method}-${path}`;
  const title = el("code", {}, `${method.toUpperCase()} ${path}`);
  const section = el(
    "section",
    { class: "card", id },
    el("h3", {}, title, op.deprecated ? " (deprecated)" : ""),
  );
  if (op.summary) section.append(el("p", {}, op.summary));
  if (op.description) section.append(el("p", {}, op.description));
  const security = op.security ?? doc.security ?? [];
  const schemes = security.flatMap((s) => Object.keys(s));
  section.append(el("p", {}, "Auth: ", schemes.length ? schemes.join(", ") : "none"));
  if (op.parameters && op.parameters.length) {
    section.append(el("h4", {}, "Parameters"));
    const items = op.parameters.map((p) =>
      el(
        "li",
        {},
        el("code", {}, p.name),
        ` (${p.in}${p.required ? ", required" : ""}) `,
        outline(doc, p.schema || {}),
        p.description ? ` — ${p.description}` : "",
      ),
    );
    section.append(el("ul", {}, ...items));
  }
  if (op.requestBody) {
    section.append(el("h4", {}, "Request body"));
    for (const [type, media] of Object.entries(op.requestBody.content || {})) {
      section.append(el("p", {}, el("code", {}, type)), outline(doc, media.schema || {}));
    }
  }
  section.append(el("h4", {}, "Responses"));
  const rows = Object.entries(op.responses || {}).map(([status, response]) => {
    const content = Object.entries(response.content || {});
    return el(
      "li",
      {},
      el("strong", {}, status), " ", response.description || "",
      ...content.map(([type, media]) =>
        el("div", {}, el("code", {}, type), " ", outline(doc, media.schema || {})),
      ),
    );
  });
  section.append(el("ul", {}, ...rows));
  return section;
}

async function main() {
  const status = document.getElementById("api-status");
  let doc;
  try {
    const resp = await fetch("/api/openapi.json");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    doc = await resp.json();
  } catch (e) {
    status.textContent = `Could not load /api/openapi.json: ${e.message}`;
    return;
  }
  status.textContent = `${doc.info.title} ${doc.info.version}, OpenAPI ${doc.openapi}.`;
  document.getElementById("api-version").textContent = `v${doc.info.version}`;
  if (doc.info.description) {
    const paragraphs = doc.info.description.split("\n\n").map((p) => el("p", {}, p));
    document.getElementById("api-intro").append(...paragraphs);
  }
  const groups = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push([method, path, op]);
    }
  }
  const index = document.getElementById("api-index");
  const body = document.getElementById("api-operations");
  for (const [tag, ops] of groups) {
    const links = ops.map(([m, p, op]) =>
      el(
        "li",
        {},
        el("a", { href: `#${op.operationId || `${m}-${p}`}` }, `${m.toUpperCase()} ${p}`),
        op.summary ? ` — ${op.summary}` : "",
      ),
    );
    index.append(el("h2", {}, tag), el("ul", {}, ...links));
    body.append(el("h2", {}, tag), ...ops.map(([m, p, op]) => operation(doc, m, p, op)));
  }
}

main();
