// A small, safe subset of Markdown rendered as DOM nodes: fenced code, headings, lists, quotes,
// rules and paragraphs; bold, italic, inline code and http(s) links inside them.
//
// Model output never becomes HTML: every piece of it enters the page as a text node, the only
// elements are the ones created here, and a link keeps its URL only when it is http(s). Text
// that is not Markdown shows as written. An unclosed code fence (a reply still streaming) runs
// to the end of the text.

const FENCE = /^\s*```(.*)$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const RULE = /^ {0,3}([-*_])( *\1){2,} *$/;
const QUOTE = /^\s*> ?(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
// Inline spans, earliest match first: `code`, **bold**, *italic*, [label](url).
const INLINE = /`([^`\n]+)`|\*\*(.+?)\*\*|\*([^*\s](?:[^*\n]*[^*\s])?)\*|\[([^\]\n]+)\]\(([^)\s]+)\)/;
const SAFE_URL = /^https?:\/\//i;

function element(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

/** Appends `text` to `parent`, with its inline spans as elements. */
function appendInline(parent, text) {
  let rest = text;
  for (let match = INLINE.exec(rest); match; match = INLINE.exec(rest)) {
    parent.append(rest.slice(0, match.index));
    const [whole, code, bold, italic, label, url] = match;
    if (code !== undefined) {
      parent.append(element("code", code));
    } else if (bold !== undefined) {
      appendInline(parent.appendChild(element("strong")), bold);
    } else if (italic !== undefined) {
      appendInline(parent.appendChild(element("em")), italic);
    } else if (SAFE_URL.test(url)) {
      const link = parent.appendChild(element("a"));
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener noreferrer nofollow";
      appendInline(link, label);
    } else {
      parent.append(whole);
    }
    rest = rest.slice(match.index + whole.length);
  }
  parent.append(rest);
}

/** An element holding `lines`, one line break between them, inline spans rendered. */
function textBlock(tag, lines) {
  const node = document.createElement(tag);
  lines.forEach((line, i) => {
    if (i > 0) node.append(document.createElement("br"));
    appendInline(node, line);
  });
  return node;
}

/**
 * The items of the block that starts at line `start`: the captured text of the lines matching
 * `pattern`, blank lines between them allowed (a loose list); and the line after the block.
 */
function run(lines, start, pattern, loose) {
  const items = [];
  let i = start;
  while (i < lines.length) {
    let next = i;
    while (loose && items.length && next < lines.length && !lines[next].trim()) next++;
    const match = next < lines.length && pattern.exec(lines[next]);
    if (!match) break;
    items.push(match[match.length - 1]);
    i = next + 1;
  }
  return { items, end: i };
}

/** Renders `source` as a DocumentFragment of block elements. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if (!line.trim()) {
      i++;
    } else if ((match = FENCE.exec(line))) {
      const end = lines.findIndex((candidate, j) => j > i && FENCE.test(candidate) && !candidate.trim().slice(3));
      const body = lines.slice(i + 1, end < 0 ? lines.length : end);
      const code = element("code", body.join("\n"));
      const language = match[1].trim();
      if (language) code.dataset.language = language;
      fragment.append(element("pre", code));
      i = end < 0 ? lines.length : end + 1;
    } else if ((match = HEADING.exec(line))) {
      fragment.append(textBlock(`h${match[1].length}`, [match[2]]));
      i++;
    } else if (RULE.test(line)) {
      fragment.append(document.createElement("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const { items, end } = run(lines, i, QUOTE, false);
      fragment.append(textBlock("blockquote", items));
      i = end;
    } else if (BULLET.test(line)) {
      const { items, end } = run(lines, i, BULLET, true);
      fragment.append(element("ul", ...items.map((item) => textBlock("li", [item]))));
      i = end;
    } else if ((match = NUMBERED.exec(line))) {
      const { items, end } = run(lines, i, NUMBERED, true);
      const list = element("ol", ...items.map((item) => textBlock("li", [item])));
      list.start = Number(match[1]);
      fragment.append(list);
      i = end;
    } else {
      const paragraph = [];
      for (; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) paragraph.push(lines[i]);
      fragment.append(textBlock("p", paragraph));
    }
  }
  return fragment;
}

function startsBlock(line) {
  return [FENCE, HEADING, RULE, QUOTE, BULLET, NUMBERED].some((pattern) => pattern.test(line));
}
