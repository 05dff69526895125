/*
 * Line diffs of FHIR resources for the card playground.
 *
 * Both resources are pretty-printed with sorted keys (so only real changes show), then compared
 * line by line with a longest-common-subsequence diff. The common head and tail are cut off
 * first, so the quadratic part only sees the changed middle (a Claim with one new line item
 * compares a few dozen lines, not hundreds).
 *
 * window.CdsDiff = { canonical, pretty, diffLines, diffValues, hunks, stats }
 */
(function (global) {
  "use strict";

  // Above this many LCS cells the middle is shown as "all removed, then all added".
  const MAX_CELLS = 4000000;

  /** ``value`` with object keys sorted at every level (arrays keep their order). */
  function canonical(value) {
    if (Array.isArray(value)) {
      return value.map(canonical);
    }
    if (value !== null && typeof value === "object") {
      const sorted = {};
      for (const key of Object.keys(value).sort()) {
        sorted[key] = canonical(value[key]);
      }
      return sorted;
    }
    return value;
  }

  /** Two-space indented JSON with sorted keys; "" for undefined. */
  function pretty(value) {
    return value === undefined ? "" : JSON.stringify(canonical(value), null, 2);
  }

  function splitLines(text) {
    return text === "" ? [] : text.split("\n");
  }

  /**
   * Operations turning ``before`` (array of lines) into ``after``: a list of
   * {op: "equal" | "remove" | "add", text, oldLine, newLine} (1-based line numbers, or null).
   * In each changed stretch the removed lines come before the added ones.
   */
  function diffLines(before, after) {
    let head = 0;
    while (head < before.length && head < after.length && before[head] === after[head]) {
      head += 1;
    }
    let tail = 0;
    while (
      tail < before.length - head &&
      tail < after.length - head &&
      before[before.length - 1 - tail] === after[after.length - 1 - tail]
    ) {
      tail += 1;
    }
    const a = before.slice(head, before.length - tail);
    const b = after.slice(head, after.length - tail);
    const ops = [];
    let oldLine = 1;
    let newLine = 1;
    const push = (op, text) => {
      ops.push({
        op,
        text,
        oldLine: op === "add" ? null : oldLine,
        newLine: op === "remove" ? null : newLine,
      });
      if (op !== "add") oldLine += 1;
      if (op !== "remove") newLine += 1;
    };

    for (let i = 0; i < head; i += 1) push("equal", before[i]);
    for (const op of middle(a, b)) push(op[0], op[1]);
    for (let i = before.length - tail; i < before.length; i += 1) push("equal", before[i]);
    return ops;
  }

  function middle(a, b) {
    const n = a.length;
    const m = b.length;
    if (n === 0 || m === 0 || (n + 1) * (m + 1) > MAX_CELLS) {
      return a.map((text) => ["remove", text]).concat(b.map((text) => ["add", text]));
    }
    // lcs[i][j]: length of the LCS of a[i:] and b[j:], in one flat typed array.
    const width = m + 1;
    const lcs = new Uint32Array((n + 1) * width);
    for (let i = n - 1; i >= 0; i -= 1) {
      for (let j = m - 1; j >= 0; j -= 1) {
        lcs[i * width + j] =
          a[i] === b[j]
            ? lcs[(i + 1) * width + j + 1] + 1
            : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
      }
    }
    const ops = [];
    let removed = [];
    let added = [];
    const flush = () => {
      for (const text of removed) ops.push(["remove", text]);
      for (const text of added) ops.push(["add", text]);
      removed = [];
      added = [];
    };
    let i = 0;
    let j = 0;
    while (i < n && j < m) {
      if (a[i] === b[j]) {
        flush();
        ops.push(["equal", a[i]]);
        i += 1;
        j += 1;
      } else if (lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
        removed.push(a[i]);
        i += 1;
      } else {
        added.push(b[j]);
        j += 1;
      }
    }
    while (i < n) removed.push(a[i++]);
    while (j < m) added.push(b[j++]);
    flush();
    return ops;
  }

  /** The line diff of two JSON values (undefined for "nothing": a create or a delete). */
  function diffValues(before, after) {
    return diffLines(splitLines(pretty(before)), splitLines(pretty(after)));
  }

  /**
   * ``ops`` with long unchanged stretches folded: every changed line keeps ``context`` unchanged
   * lines around it; the rest become {op: "gap", count}.
   */
  function hunks(ops, context) {
    const keep = new Array(ops.length).fill(false);
    const around = context === undefined ? 3 : context;
    ops.forEach((op, index) => {
      if (op.op !== "equal") {
        const last = Math.min(ops.length - 1, index + around);
        for (let k = Math.max(0, index - around); k <= last; k += 1) {
          keep[k] = true;
        }
      }
    });
    const out = [];
    let gap = 0;
    ops.forEach((op, index) => {
      if (keep[index]) {
        if (gap) out.push({ op: "gap", count: gap });
        gap = 0;
        out.push(op);
      } else {
        gap += 1;
      }
    });
    if (gap) out.push({ op: "gap", count: gap });
    return out;
  }

  function stats(ops) {
    let added = 0;
    let removed = 0;
    for (const op of ops) {
      if (op.op === "add") added += 1;
      if (op.op === "remove") removed += 1;
    }
    return { added, removed };
  }

  global.CdsDiff = Object.freeze({ canonical, pretty, diffLines, diffValues, hunks, stats });
})(window);
