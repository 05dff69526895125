/*
 * The card playground: pick or paste a CDS Hooks request, send it to this service, and see the
 * cards as an EHR shows them, with each suggestion's FHIR write as a diff against the draft.
 * Accept and Dismiss send real feedback.
 *
 * No framework and no build: plain DOM. Text from the network only ever reaches the page as
 * text nodes (textContent) or through CdsMarkdown, which escapes before it formats.
 */
(function () {
  "use strict";

  const STANDARD_FIXTURE = "encounter-discharge--tibia-nonunion-removal.json";
  const INDICATORS = {
    info: { label: "Info", icon: "\u2139" },
    warning: { label: "Warning", icon: "\u26A0" },
    critical: { label: "Critical", icon: "\u2716" },
  };
  const HTTP_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("request-form"),
    fixture: $("fixture"),
    fixtureInfo: $("fixture-info"),
    body: $("request-body"),
    service: $("service"),
    serviceInfo: $("service-info"),
    noPrefetch: $("no-prefetch"),
    send: $("send"),
    status: $("result-status"),
    meta: $("result-meta"),
    http: $("result-http"),
    time: $("result-time"),
    resultService: $("result-service"),
    error: $("result-error"),
    cards: $("cards"),
    raw: $("raw"),
    rawJson: $("raw-json"),
  };

  const state = {
    fixtures: [],
    services: [], // discovery entries
    lastHook: undefined, // the request hook the service was last matched to
  };
  let idCounter = 0;
  const nextId = (prefix) => prefix + "-" + (idCounter += 1);

  /* ---- DOM helpers ----------------------------------------------------------------------- */

  /** An element; string children become text nodes, never markup. */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function isHttpUrl(value) {
    if (typeof value !== "string") return false;
    try {
      const url = new URL(value);
      return url.protocol === "http:" || url.protocol === "https:";
    } catch (_) {
      return false;
    }
  }

  /** A link opened in a new tab, or the label as plain text when the URL is not http(s). */
  function externalLink(label, url) {
    if (!isHttpUrl(url)) return el("span", {}, label);
    return el(
      "a",
      { href: url, target: "_blank", rel: "noopener noreferrer" },
      label,
      el("span", { className: "visually-hidden" }, " (opens in a new tab)")
    );
  }

  function httpText(status) {
    return "HTTP " + status + (HTTP_REASONS[status] ? " " + HTTP_REASONS[status] : "");
  }

  function plural(count, one, many) {
    return count + " " + (count === 1 ? one : many || one + "s");
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch (_) {
      body = undefined;
    }
    return { response, body, text };
  }

  function outcomeText(body) {
    if (!body || body.resourceType !== "OperationOutcome" || !Array.isArray(body.issue)) {
      return "";
    }
    return body.issue
      .map((issue) => issue.diagnostics || (issue.details && issue.details.text) || issue.code)
      .filter(Boolean)
      .join(" ");
  }

  /* ---- fixtures and services ------------------------------------------------------------- */

  async function loadFixtures() {
    let listing;
    try {
      const { response, body } = await getJson("/playground/fixtures");
      if (!response.ok || !Array.isArray(body)) throw new Error(httpText(response.status));
      listing = body;
    } catch (error) {
      ui.fixture.replaceChildren(el("option", { value: "" }, "Fixtures unavailable"));
      ui.fixtureInfo.textContent = "The fixtures could not be loaded (" + error.message + ").";
      return;
    }
    state.fixtures = listing;
    const groups = new Map();
    for (const fixture of listing) {
      const hook = fixture.hook || "other";
      if (!groups.has(hook)) groups.set(hook, []);
      groups.get(hook).push(fixture);
    }
    const options = [el("option", { value: "" }, "(none: paste a request)")];
    for (const [hook, fixtures] of groups) {
      options.push(
        el(
          "optgroup",
          { label: "hook " + hook },
          fixtures.map((fixture) =>
            el("option", { value: fixture.name }, fixtureLabel(fixture))
          )
        )
      );
    }
    ui.fixture.replaceChildren(...options);
  }

  function fixtureLabel(fixture) {
    const name = fixture.name.replace(/\.json$/, "").replace(/^[^-]+(?:-[^-]+)*?--/, "");
    let expected;
    if (fixture.status && fixture.status !== 200) expected = "HTTP " + fixture.status;
    else if (fixture.findings && fixture.findings.length) expected = fixture.findings.join(", ");
    else expected = "no cards";
    return name + " \u2014 " + expected;
  }

  function describeFixture(fixture) {
    if (!fixture) {
      ui.fixtureInfo.textContent = "No fixture: paste a request below.";
      return;
    }
    const findings =
      fixture.findings && fixture.findings.length ? fixture.findings.join(", ") : "none (no cards)";
    ui.fixtureInfo.replaceChildren(
      el("span", { className: "info-item" }, el("strong", {}, "Hook: "), fixture.hook || "?"),
      el("span", { className: "info-item" }, el("strong", {}, "Service: "), fixture.service || "?"),
      el("span", { className: "info-item" }, el("strong", {}, "Expected: "),
        "HTTP " + (fixture.status || "?") + ", findings: " + findings)
    );
  }

  async function selectFixture(name) {
    const fixture = state.fixtures.find((candidate) => candidate.name === name);
    describeFixture(fixture);
    if (!fixture) return;
    ui.fixture.value = name;
    // Only the latest choice fills the editor, whatever order the answers arrive in.
    const ticket = (state.fixtureTicket = (state.fixtureTicket || 0) + 1);
    const response = await fetch("/playground/fixtures/" + encodeURIComponent(name));
    const text = await response.text();
    if (ticket !== state.fixtureTicket) return;
    if (!response.ok) {
      ui.fixtureInfo.textContent =
        "The fixture could not be loaded (" + httpText(response.status) + ").";
      return;
    }
    ui.body.value = text;
    if (history.replaceState) history.replaceState(null, "", "#" + encodeURIComponent(name));
    matchServiceToRequest(true);
  }

  async function loadServices() {
    try {
      const { response, body } = await getJson("/cds-services");
      if (!response.ok || !body || !Array.isArray(body.services)) {
        const reason = outcomeText(body) || httpText(response.status);
        throw new Error(reason);
      }
      state.services = body.services;
    } catch (error) {
      // Without discovery, offer the services the fixtures name.
      const ids = [...new Set(state.fixtures.map((fixture) => fixture.service).filter(Boolean))];
      state.services = ids.map((id) => ({
        id,
        hook: (state.fixtures.find((fixture) => fixture.service === id) || {}).hook,
      }));
      ui.serviceInfo.textContent =
        "Discovery (GET /cds-services) failed: " + error.message + ". The services below are " +
        "the ones the fixtures name.";
    }
    ui.service.replaceChildren(
      ...state.services.map((service) =>
        el("option", { value: service.id }, service.id + " (hook " + service.hook + ")")
      )
    );
  }

  function requestHook() {
    try {
      const body = JSON.parse(ui.body.value);
      return body && typeof body === "object" && typeof body.hook === "string" ? body.hook : null;
    } catch (_) {
      return null;
    }
  }

  /** Select the service whose hook is the request's (when the hook changed, or ``force``). */
  function matchServiceToRequest(force) {
    const hook = requestHook();
    if (hook !== null && (force || hook !== state.lastHook)) {
      const match = state.services.find((service) => service.hook === hook);
      if (match) ui.service.value = match.id;
    }
    if (hook !== null) state.lastHook = hook;
    checkServiceHook();
  }

  function checkServiceHook() {
    const hook = requestHook();
    const service = state.services.find((candidate) => candidate.id === ui.service.value);
    const warning = ui.serviceInfo.querySelector(".hook-warning");
    if (warning) warning.remove();
    if (hook && service && service.hook && service.hook !== hook) {
      ui.serviceInfo.append(
        el(
          "span",
          { className: "hook-warning" },
          " Note: this service answers hook \u201C" + service.hook + "\u201D but the request " +
            "says \u201C" + hook + "\u201D; expect HTTP 400."
        )
      );
    }
  }

  /* ---- sending --------------------------------------------------------------------------- */

  function setStatus(text, tone) {
    ui.status.textContent = text;
    ui.status.className = "result-status" + (tone ? " result-status--" + tone : "");
  }

  function resetResult() {
    ui.meta.hidden = true;
    ui.error.hidden = true;
    ui.error.replaceChildren();
    ui.cards.replaceChildren();
    ui.raw.hidden = true;
    ui.rawJson.textContent = "";
  }

  async function send(event) {
    if (event) event.preventDefault();
    const serviceId = ui.service.value;
    if (!serviceId) {
      setStatus("Choose a service first.", "error");
      ui.service.focus();
      return;
    }
    let parsed = null;
    try {
      parsed = JSON.parse(ui.body.value);
    } catch (_) {
      parsed = null;
    }
    let payload = ui.body.value;
    if (ui.noPrefetch.checked) {
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        setStatus(
          "The request body is not a JSON object, so its prefetch cannot be removed. Fix the " +
            "JSON or untick \u201Csend without prefetch\u201D.",
          "error"
        );
        ui.body.focus();
        return;
      }
      const copy = Object.assign({}, parsed);
      delete copy.prefetch;
      payload = JSON.stringify(copy);
    }

    resetResult();
    ui.send.disabled = true;
    ui.cards.setAttribute("aria-busy", "true");
    setStatus("Sending to " + serviceId + "\u2026");
    const started = performance.now();
    let response;
    let text;
    try {
      response = await fetch("/cds-services/" + encodeURIComponent(serviceId), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: payload,
      });
      text = await response.text();
    } catch (error) {
      const elapsed = Math.round(performance.now() - started);
      setStatus("The request failed after " + elapsed + " ms: " + error.message + ".", "error");
      ui.send.disabled = false;
      ui.cards.removeAttribute("aria-busy");
      return;
    }
    const elapsed = Math.round(performance.now() - started);
    ui.send.disabled = false;
    ui.cards.removeAttribute("aria-busy");
    showResponse({ serviceId, request: parsed, response, text, elapsed });
  }

  function showResponse({ serviceId, request, response, text, elapsed }) {
    let body;
    try {
      body = JSON.parse(text);
    } catch (_) {
      body = undefined;
    }
    ui.meta.hidden = false;
    ui.http.textContent = httpText(response.status);
    ui.http.className = response.ok ? "ok" : "bad";
    ui.time.textContent = elapsed + " ms";
    ui.resultService.textContent = serviceId;
    ui.raw.hidden = false;
    ui.rawJson.textContent = body === undefined ? text : JSON.stringify(body, null, 2);

    const cards = response.ok && body && Array.isArray(body.cards) ? body.cards : null;
    if (cards) {
      setStatus(
        httpText(response.status) + " in " + elapsed + " ms: " +
          (cards.length ? plural(cards.length, "card") + "." : "no cards (nothing applies)."),
        "ok"
      );
      cards.forEach((card, index) => ui.cards.append(renderCard(card, index, serviceId, request)));
      if (!cards.length) {
        ui.cards.append(el("p", { className: "empty" }, "The service answered with no cards."));
      }
      return;
    }
    const diagnostics = outcomeText(body);
    setStatus(
      httpText(response.status) + " in " + elapsed + " ms" +
        (diagnostics ? ": " + diagnostics : "."),
      "error"
    );
    showError(response, body);
  }

  function showError(response, body) {
    ui.error.hidden = false;
    const parts = [el("h3", {}, "The service refused the request: " + httpText(response.status))];
    if (body && body.resourceType === "OperationOutcome" && Array.isArray(body.issue)) {
      parts.push(
        el(
          "ul",
          { className: "issues" },
          body.issue.map((issue) =>
            el(
              "li",
              {},
              el("span", { className: "issue-severity" }, (issue.severity || "error") + " "),
              el("span", { className: "issue-code" }, "(" + (issue.code || "?") + ")"),
              ": ",
              issue.diagnostics || (issue.details && issue.details.text) || "no diagnostics"
            )
          )
        )
      );
    } else {
      parts.push(el("p", {}, "The answer is not an OperationOutcome; see the raw response below."));
    }
    const challenge = response.headers.get("WWW-Authenticate");
    if (challenge) parts.push(el("p", {}, "WWW-Authenticate: ", el("code", {}, challenge)));
    ui.error.replaceChildren(...parts);
  }

  /* ---- cards ----------------------------------------------------------------------------- */

  function renderCard(card, index, serviceId, request) {
    const indicator = INDICATORS[card.indicator] || {
      label: String(card.indicator || "?"),
      icon: "?",
    };
    const tone = INDICATORS[card.indicator] ? card.indicator : "unknown";
    const summaryId = nextId("card-summary");
    const article = el("article", {
      className: "card card--" + tone,
      "aria-labelledby": summaryId,
      "data-card-uuid": card.uuid,
      "data-finding": card.extension && card.extension["cpt20703.finding"],
    });
    const controls = []; // disabled once feedback is sent
    const feedbackStatus = el("p", { className: "card-feedback", role: "status" });

    article.append(
      el(
        "div",
        { className: "card-head" },
        el(
          "span",
          { className: "indicator indicator--" + tone },
          el("span", { "aria-hidden": "true", className: "indicator-icon" }, indicator.icon),
          " ",
          indicator.label
        ),
        el("h3", { id: summaryId, className: "card-summary" }, card.summary || "(no summary)")
      )
    );

    if (card.detail) {
      const detail = el("div", { className: "card-detail markdown" });
      CdsMarkdown.renderInto(detail, card.detail, 3);
      article.append(detail);
    }

    if (card.source && card.source.label) {
      article.append(
        el(
          "p",
          { className: "card-source" },
          el("span", { className: "label" }, "Source: "),
          externalLink(card.source.label, card.source.url),
          isHttpUrl(card.source.url)
            ? el("span", { className: "url" }, " " + card.source.url)
            : null
        )
      );
    }

    const sendFeedback = (entry, describe) =>
      postFeedback({ serviceId, card, entry, describe, controls, feedbackStatus });

    if (Array.isArray(card.suggestions) && card.suggestions.length) {
      const section = el(
        "section",
        { className: "suggestions", "aria-label": "Suggestions" },
        el("h4", {}, card.suggestions.length === 1 ? "Suggestion" : "Suggestions")
      );
      if (card.selectionBehavior) {
        section.append(
          el(
            "p",
            { className: "hint" },
            "Selection: " + card.selectionBehavior.replace(/-/g, " ") + "."
          )
        );
      }
      card.suggestions.forEach((suggestion) => {
        section.append(renderSuggestion(suggestion, request, controls, sendFeedback));
      });
      article.append(section);
    }

    article.append(renderOverride(card, controls, sendFeedback));

    if (Array.isArray(card.links) && card.links.length) {
      article.append(
        el(
          "section",
          { className: "links", "aria-label": "Links" },
          el("h4", {}, "Links"),
          el(
            "ul",
            {},
            card.links.map((link) =>
              el(
                "li",
                {},
                externalLink(link.label || link.url, link.url),
                link.type === "smart" ? " (SMART app)" : null
              )
            )
          )
        )
      );
    }

    article.append(feedbackStatus);
    const finding = card.extension && card.extension["cpt20703.finding"];
    article.append(
      el(
        "p",
        { className: "card-meta" },
        finding ? "Finding " : null,
        finding ? el("code", {}, finding) : null,
        finding ? " \u00B7 " : null,
        "card ",
        el("code", {}, card.uuid || "(no uuid)")
      )
    );
    if (!card.uuid) {
      controls.forEach((control) => (control.disabled = true));
      feedbackStatus.textContent = "This card has no uuid, so no feedback can be sent for it.";
    }
    return article;
  }

  function renderSuggestion(suggestion, request, controls, sendFeedback) {
    const block = el("div", { className: "suggestion" });
    const button = el(
      "button",
      { type: "button", className: "button button--primary" },
      suggestion.label || "Accept"
    );
    controls.push(button);
    button.addEventListener("click", () => {
      if (!suggestion.uuid) return;
      sendFeedback(
        { outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }] },
        "Accepted \u201C" + (suggestion.label || "suggestion") + "\u201D"
      );
    });
    const head = el("div", { className: "suggestion-head" }, button);
    if (suggestion.isRecommended) head.append(el("span", { className: "tag" }, "Recommended"));
    if (!suggestion.uuid) {
      head.append(el("span", { className: "hint" }, " (no uuid: accepting sends no feedback)"));
    }
    block.append(head);
    for (const action of suggestion.actions || []) {
      block.append(renderAction(action, request));
    }
    return block;
  }

  function renderOverride(card, controls, sendFeedback) {
    const wrapper = el("div", { className: "override" });
    const reasons = Array.isArray(card.overrideReasons) ? card.overrideReasons : [];
    let select = null;
    if (reasons.length) {
      const selectId = nextId("override");
      select = el(
        "select",
        { id: selectId },
        reasons.map((reason, index) =>
          el("option", { value: String(index) }, reason.display || reason.code)
        )
      );
      controls.push(select);
      wrapper.append(el("label", { for: selectId }, "Override reason"), select);
    }
    const dismiss = el("button", { type: "button", className: "button" }, "Dismiss");
    controls.push(dismiss);
    dismiss.addEventListener("click", () => {
      const entry = { outcome: "overridden" };
      let describe = "Dismissed";
      if (select) {
        const reason = reasons[Number(select.value)];
        const coding = { code: reason.code, system: reason.system };
        if (reason.display) coding.display = reason.display;
        entry.overrideReason = { reason: coding };
        describe += " (" + (reason.display || reason.code) + ")";
      }
      sendFeedback(entry, describe);
    });
    wrapper.append(dismiss);
    return wrapper;
  }

  async function postFeedback({ serviceId, card, entry, describe, controls, feedbackStatus }) {
    const body = {
      feedback: [
        Object.assign({ card: card.uuid }, entry, { outcomeTimestamp: new Date().toISOString() }),
      ],
    };
    controls.forEach((control) => (control.disabled = true));
    feedbackStatus.className = "card-feedback";
    feedbackStatus.textContent = describe + ": sending feedback\u2026";
    try {
      const response = await fetch("/cds-services/" + encodeURIComponent(serviceId) + "/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      const text = await response.text();
      let answer;
      try {
        answer = JSON.parse(text);
      } catch (_) {
        answer = undefined;
      }
      if (!response.ok) {
        const why = outcomeText(answer);
        throw new Error(httpText(response.status) + (why ? ": " + why : ""));
      }
      const counts = answer || {};
      feedbackStatus.className = "card-feedback card-feedback--done";
      feedbackStatus.textContent =
        describe + ". Feedback sent: " + httpText(response.status) + ", stored " +
        (counts.stored ?? "?") + ", duplicates " + (counts.duplicates ?? "?") +
        (counts.unknownCards ? ", unknown cards " + counts.unknownCards : "") + ".";
    } catch (error) {
      controls.forEach((control) => (control.disabled = false));
      feedbackStatus.className = "card-feedback card-feedback--error";
      feedbackStatus.textContent =
        describe + ": the feedback was not accepted (" + error.message + "). Try again.";
    }
  }

  /* ---- suggestion actions as diffs ------------------------------------------------------- */

  /** Every resource in the request: prefetch values, context values, and Bundle entries. */
  function requestResources(request) {
    const found = [];
    const visit = (value, depth) => {
      if (!value || typeof value !== "object" || depth > 4) return;
      if (Array.isArray(value)) {
        value.forEach((item) => visit(item, depth + 1));
        return;
      }
      if (typeof value.resourceType !== "string") return;
      if (value.resourceType === "Bundle") {
        for (const entry of value.entry || []) visit(entry && entry.resource, depth + 1);
      } else {
        found.push(value);
      }
    };
    if (request && typeof request === "object") {
      for (const key of ["prefetch", "context"]) {
        const holder = request[key];
        if (holder && typeof holder === "object") {
          Object.values(holder).forEach((value) => visit(value, 0));
        }
      }
    }
    return found;
  }

  function referenceOf(action) {
    const resource = action.resource;
    if (resource && resource.resourceType && resource.id) {
      return resource.resourceType + "/" + resource.id;
    }
    return typeof action.resourceId === "string" ? action.resourceId : null;
  }

  function findInRequest(request, reference) {
    if (!reference) return undefined;
    const [type, id] = reference.split("/").slice(-2);
    return requestResources(request).find(
      (resource) => resource.resourceType === type && resource.id === id
    );
  }

  function renderAction(action, request) {
    const type = action.type;
    const reference = referenceOf(action);
    const what =
      reference || (action.resource && action.resource.resourceType) || "a resource";
    const wrapper = el(
      "div",
      { className: "action" },
      el(
        "p",
        { className: "action-head" },
        el("span", { className: "tag tag--" + type }, type || "?"),
        " ",
        el("code", {}, what),
        action.description ? ": " + action.description : ""
      )
    );

    let before;
    let after;
    let note = "";
    if (type === "update") {
      before = findInRequest(request, reference);
      after = action.resource;
      if (before === undefined) {
        note =
          "The draft " + what + " is not in the request (the service fetched it), so the whole " +
          "resource the action writes is shown as added.";
      } else {
        note = "Changes to the draft " + what + " from the request.";
      }
    } else if (type === "create") {
      after = action.resource;
      note = "A new resource: every line is added.";
    } else if (type === "delete") {
      before = findInRequest(request, reference);
      if (before === undefined) {
        note = "Deletes " + what + ", which is not in the request.";
      } else {
        note = "Deletes " + what + ": every line is removed.";
      }
    } else {
      wrapper.append(el("p", { className: "hint" }, "Unknown action type; nothing to show."));
      return wrapper;
    }
    const ops = CdsDiff.diffValues(before, after);
    const counts = CdsDiff.stats(ops);
    const details = el(
      "details",
      { className: "diff-box", open: true },
      el(
        "summary",
        {},
        "FHIR " + what + " as written: +" + counts.added + " " +
          (counts.added === 1 ? "line" : "lines") + " added, \u2212" + counts.removed + " " +
          (counts.removed === 1 ? "line" : "lines") + " removed"
      ),
      el("p", { className: "hint" }, note),
      renderDiff(ops)
    );
    wrapper.append(details);
    return wrapper;
  }

  function renderDiff(ops) {
    const pre = el("pre", {
      className: "diff",
      tabindex: "0",
      "aria-label": "Line diff: lines starting with + are added, with \u2212 removed",
    });
    const lines = el("span", { className: "diff-body" });
    pre.append(lines);
    const shown = CdsDiff.hunks(ops, 3);
    if (!ops.length) {
      lines.append(el("span", { className: "diff-line diff-gap" }, "(empty)\n"));
    }
    for (const op of shown) {
      if (op.op === "gap") {
        lines.append(
          el(
            "span",
            { className: "diff-line diff-gap" },
            "\u22EF " + plural(op.count, "unchanged line") + " \u22EF\n"
          )
        );
      } else if (op.op === "add") {
        lines.append(el("ins", { className: "diff-line diff-add" }, "+ " + op.text + "\n"));
      } else if (op.op === "remove") {
        lines.append(el("del", { className: "diff-line diff-remove" }, "- " + op.text + "\n"));
      } else {
        lines.append(el("span", { className: "diff-line diff-equal" }, "  " + op.text + "\n"));
      }
    }
    return pre;
  }

  /* ---- start ----------------------------------------------------------------------------- */

  async function start() {
    ui.form.addEventListener("submit", send);
    ui.fixture.addEventListener("change", () => {
      if (ui.fixture.value) selectFixture(ui.fixture.value);
      else describeFixture(null);
    });
    ui.service.addEventListener("change", checkServiceHook);
    let typing = null;
    ui.body.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => matchServiceToRequest(false), 300);
    });
    ui.body.addEventListener("keydown", (event) => {
      // Ctrl+Enter (or Cmd+Enter) in the editor sends, as in most request tools.
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send(event);
    });

    await loadFixtures();
    await loadServices();
    let wanted = "";
    try {
      wanted = decodeURIComponent(location.hash.slice(1));
    } catch (_) {
      wanted = "";
    }
    const initial = state.fixtures.some((fixture) => fixture.name === wanted)
      ? wanted
      : state.fixtures.some((fixture) => fixture.name === STANDARD_FIXTURE)
        ? STANDARD_FIXTURE
        : state.fixtures.length
          ? state.fixtures[0].name
          : null;
    if (initial) await selectFixture(initial);
    document.body.dataset.ready = "true";
  }

  start();
})();
