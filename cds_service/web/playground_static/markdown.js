/*
 * A small, sanitising markdown renderer for CDS Hooks card details.
 *
 * The whole input is HTML-escaped FIRST; the renderer then only adds the tags it knows:
 * paragraphs, headings, bullet and numbered lists (with "[ ]"/"[x]" task boxes), fenced code,
 * **bold**, *italic*, `code` and [links](url). Links are kept only for http and https URLs and
 * open in a new tab with rel="noopener noreferrer"; any other link shows its label as text.
 * Nothing the card says can become markup, an attribute or a script.
 *
 * window.CdsMarkdown = { escapeHtml, render, renderInto }
 */
(function (global) {
  "use strict";

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const HOLE = "\u0000"; // placeholder delimiter; stripped from the input first
  const SAFE_URL = /^https?:\/\/[^\s]+$/i;

  // The only way this page turns a string into HTML. With the CSP's Trusted Types
  // ("require-trusted-types-for 'script'"), every other innerHTML assignment throws.
  const policy =
    global.trustedTypes && typeof global.trustedTypes.createPolicy === "function"
      ? global.trustedTypes.createPolicy("cds-markdown", { createHTML: (html) => html })
      : null;

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  /* ---- inline ---------------------------------------------------------------------------- */

  // ``text`` is already escaped. Code spans and links are cut out first (so their content is
  // not read as emphasis), emphasis is applied to the rest, then the pieces are put back.
  function inline(text) {
    const pieces = [];
    const hold = (html) => {
      pieces.push(html);
      return HOLE + (pieces.length - 1) + HOLE;
    };

    let out = text.replace(/`([^`\n]+)`/g, (_, code) => hold("<code>" + code + "</code>"));

    // [label](url): the URL may hold one level of balanced parentheses.
    out = out.replace(
      /\[([^\]\n]+)\]\(\s*((?:[^()\s]|\([^()\s]*\))*)\s*\)/g,
      (whole, label, url) => {
        const inner = emphasis(label);
        if (!SAFE_URL.test(url)) {
          return hold(inner);
        }
        return hold(
          '<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + inner + "</a>"
        );
      }
    );

    out = emphasis(out);
    // Hard line break: two trailing spaces or a backslash before the newline.
    out = out.replace(/(?: {2,}|\\)\n/g, "<br>\n");
    // A piece may hold earlier pieces (a code span in a link label): put back until none is left.
    const placeholder = new RegExp(HOLE + "(\\d+)" + HOLE, "g");
    for (let round = 0; round <= pieces.length && out.includes(HOLE); round += 1) {
      out = out.replace(placeholder, (_, n) => pieces[Number(n)]);
    }
    return out;
  }

  function emphasis(text) {
    return text
      .replace(/\*\*(?=\S)([^\n]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|\W)__(?=\S)([^\n]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/(^|[^*\w])\*([^\s*](?:[^*\n]*[^\s*])?)\*(?![*\w])/g, "$1<em>$2</em>")
      .replace(/(^|\W)_([^\s_](?:[^_\n]*[^\s_])?)_(?!\w)/g, "$1<em>$2</em>");
  }

  /* ---- blocks ---------------------------------------------------------------------------- */

  const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
  const BULLET = /^ {0,3}[-*+][ \t]+(.*)$/;
  const ORDERED = /^ {0,3}(\d{1,9})[.)][ \t]+(.*)$/;
  const FENCE = /^ {0,3}(```|~~~)/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;

  function taskBox(text) {
    const match = /^\[([ xX])\][ \t]+/.exec(text);
    if (!match) {
      return inline(text);
    }
    const done = match[1] !== " ";
    return (
      '<span class="task-box" role="img" aria-label="' +
      (done ? "done" : "not done") +
      '">' +
      (done ? "\u2611" : "\u2610") +
      "</span> " +
      inline(text.slice(match[0].length))
    );
  }

  /**
   * HTML for ``source`` (markdown). ``headingOffset`` shifts heading levels (a "#" becomes
   * h(1 + offset), at most h6) so that a card's headings sit under the card's own heading.
   */
  function render(source, headingOffset) {
    const offset = Number.isInteger(headingOffset) ? headingOffset : 0;
    const text = escapeHtml(
      String(source === undefined || source === null ? "" : source)
        .replace(/\u0000/g, "")
        .replace(/\r\n?/g, "\n")
    );
    const lines = text.split("\n");
    const html = [];
    let paragraph = null; // array of lines
    let list = null; // {tag, items: [array of lines]}

    function closeParagraph() {
      if (paragraph) {
        html.push("<p>" + inline(paragraph.join("\n")) + "</p>");
        paragraph = null;
      }
    }
    function closeList() {
      if (list) {
        const start = list.tag === "ol" && list.start !== 1 ? ' start="' + list.start + '"' : "";
        html.push("<" + list.tag + start + ">");
        for (const item of list.items) {
          html.push("<li>" + taskBox(item.join("\n")) + "</li>");
        }
        html.push("</" + list.tag + ">");
        list = null;
      }
    }
    function closeAll() {
      closeParagraph();
      closeList();
    }

    for (let i = 0; i < lines.length; i += 1) {
      const line = lines[i];
      if (/^\s*$/.test(line)) {
        closeParagraph();
        // A blank line ends a list unless the next line continues it.
        if (list) {
          const next = lines.slice(i + 1).find((candidate) => !/^\s*$/.test(candidate));
          let kind = null;
          if (next !== undefined && BULLET.test(next)) kind = "ul";
          else if (next !== undefined && ORDERED.test(next)) kind = "ol";
          if (kind !== list.tag) {
            closeList();
          }
        }
        continue;
      }
      if (FENCE.test(line)) {
        closeAll();
        const closing = new RegExp("^ {0,3}" + (FENCE.exec(line)[1] === "```" ? "```" : "~~~"));
        const body = [];
        i += 1;
        while (i < lines.length && !closing.test(lines[i])) {
          body.push(lines[i]);
          i += 1;
        }
        html.push('<pre class="md-code"><code>' + body.join("\n") + "</code></pre>");
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) {
        closeAll();
        const level = Math.min(heading[1].length + offset, 6);
        html.push("<h" + level + ">" + inline(heading[2]) + "</h" + level + ">");
        continue;
      }
      if (RULE.test(line) && !paragraph) {
        closeAll();
        html.push("<hr>");
        continue;
      }
      const bullet = BULLET.exec(line);
      const ordered = bullet ? null : ORDERED.exec(line);
      // As in CommonMark, only a list starting at 1 may interrupt a paragraph ("...with\n20703.
      // The..." stays prose).
      const startsList = bullet || (ordered && (!paragraph || ordered[1] === "1"));
      if (startsList) {
        closeParagraph();
        const tag = bullet ? "ul" : "ol";
        if (list && list.tag !== tag) {
          closeList();
        }
        if (!list) {
          list = { tag, start: ordered ? Number(ordered[1]) : 1, items: [] };
        }
        list.items.push([bullet ? bullet[1] : ordered[2]]);
        continue;
      }
      if (list && !paragraph) {
        // A continuation line of the last item (indented, or lazy).
        list.items[list.items.length - 1].push(line.trim());
        continue;
      }
      if (!paragraph) {
        paragraph = [];
      }
      paragraph.push(line.replace(/^ {1,3}/, ""));
    }
    closeAll();
    return html.join("\n");
  }

  /** Render ``source`` into ``element``, replacing its content. */
  function renderInto(element, source, headingOffset) {
    const html = render(source, headingOffset);
    element.innerHTML = policy ? policy.createHTML(html) : html;
    return element;
  }

  global.CdsMarkdown = Object.freeze({ escapeHtml, render, renderInto });
})(window);
