// SmolLM3 Bot glue: sends htmx requests through the desktop bridge when running in the app,
// streams replies into the page, and handles the keyboard, copy buttons and theme.
// Everything it shows comes from the app's router as HTML; it never builds markup from text.
(() => {
  "use strict";

  const tauri = window.__TAURI__;
  const desktop = !!(tauri && tauri.core && tauri.event);

  // ---------------------------------------------------------------- transport
  // In the desktop there is no server: each htmx request becomes one `hx` command, which runs
  // the same router in-process and returns status, headers and HTML.
  async function bridgeFetch(action, request) {
    const u = new URL(action, window.location.href);
    let body = "";
    const b = request.body;
    if (b instanceof URLSearchParams) body = b.toString();
    else if (b instanceof FormData) body = new URLSearchParams(b).toString();
    else if (typeof b === "string") body = b;
    const headers = {};
    const h = request.headers || {};
    const entries = h instanceof Headers ? [...h.entries()] : Object.entries(h);
    for (const [k, v] of entries) headers[k] = String(v);
    const res = await tauri.core.invoke("hx", {
      request: { method: (request.method || "GET").toUpperCase(), url: u.pathname + u.search, headers, body },
    });
    const noBody = res.status === 204 || res.status === 304;
    return new Response(noBody ? null : res.body, { status: res.status, headers: res.headers });
  }

  if (desktop) {
    document.addEventListener("htmx:config:request", (evt) => {
      evt.detail.ctx.fetch = bridgeFetch;
    });
    tauri.event.listen("chat-stream", (e) => onStream(e.payload));
  } else {
    // Browsers have no first-run wizard (it is the desktop's), so only replies stream here.
    const source = new EventSource("/events");
    source.addEventListener("chat-stream", (e) => onStream(JSON.parse(e.data)));
  }

  // ---------------------------------------------------------------- streaming
  // Deltas append text nodes to the one message being written, so each token costs the same
  // however long the conversation is. Events are applied in batches, at most five times a
  // second: however many arrive in between, the page is measured (is the reader at the
  // bottom?) and laid out once. The last event brings the finished message's HTML.
  const pending = new Map();
  let frameQueue = [];
  let frameRequested = false;

  // Each update repaints and scrolls the reply, which a software-rendered window pays for out
  // of the cores the model decodes on; five updates a second still read as a steady stream.
  const UPDATE_MS = 200;
  let lastUpdate = 0;

  function onStream(p) {
    if (p.type === "download") return onDownload(p);
    // A file dragged over the window (desktop): the window shows it can be dropped.
    if (p.type === "drag") return document.documentElement.classList.toggle("drop-target", !!p.over);
    // A message from the app (HTML it rendered and escaped), such as a dropped file refused.
    if (p.type === "toast") {
      const toast = document.getElementById("toast");
      if (toast) toast.innerHTML = p.html;
      return;
    }
    frameQueue.push(p);
    if (!frameRequested) {
      frameRequested = true;
      const wait = Math.max(0, lastUpdate + UPDATE_MS - performance.now());
      const final = p.type === "done" || p.type === "error";
      if (final || wait === 0) requestAnimationFrame(applyFrame);
      else setTimeout(() => requestAnimationFrame(applyFrame), wait);
    }
  }

  function applyFrame() {
    frameRequested = false;
    lastUpdate = performance.now();
    const batch = frameQueue;
    frameQueue = [];
    const follow = nearBottom();
    for (const p of batch) {
      const el = document.getElementById("msg-" + p.message_id);
      if (!el) {
        // The POST that created the message may not have been swapped in yet.
        const list = pending.get(p.message_id) || [];
        if (list.length < 5000) list.push(p);
        pending.set(p.message_id, list);
        continue;
      }
      apply(el, p);
    }
    if (follow) scrollToBottom();
  }

  // Download progress from the first-run wizard: the bar is replaced on every update; the
  // panel around it (title, buttons) only when the phase changes, so a click is never lost.
  function onDownload(p) {
    const panel = document.getElementById("download");
    if (panel && panel.dataset.phase === p.phase) {
      const bar = document.getElementById("download-bar");
      if (bar) bar.outerHTML = p.bar;
      return;
    }
    // The models screen shows the same download, check and load: it is drawn again (by the
    // app) when the phase changes.
    const models = document.getElementById("models-panel");
    if (models && window.htmx) {
      window.htmx.ajax("GET", "/models", { target: "#overlay", swap: "innerHTML" });
      return;
    }
    const wizard = document.getElementById("wizard");
    if (!wizard || p.phase === "cancelled") return;
    wizard.innerHTML = p.html;
    htmx.process(wizard);
  }

  function apply(el, p) {
    const seen = Number(el.dataset.seq || "0");
    if (p.seq && p.seq <= seen) return;
    if (p.type === "done" || p.type === "error") {
      pending.delete(p.message_id);
      if (p.html) {
        el.outerHTML = p.html;
        const fresh = document.getElementById("msg-" + p.message_id);
        if (fresh && window.htmx) window.htmx.process(fresh);
        if (fresh) decorate(fresh);
      }
      refreshStreamingState();
      refreshStatus();
      return;
    }
    el.dataset.seq = String(p.seq);
    // While the model serves other replies, the placeholder shows the place in the queue
    // (text from the app); anything else means this reply has its turn.
    const note = el.querySelector(".queue-note");
    if (p.type === "queued") {
      el.classList.add("queued");
      if (note) {
        note.textContent = p.text;
        note.hidden = false;
      }
    } else {
      el.classList.remove("queued");
      if (note) note.hidden = true;
    }
    const answer = el.querySelector(".answer");
    const details = el.querySelector("details.reasoning");
    if (p.type === "reasoning" && details) {
      details.hidden = false;
      if (!el._answered) details.open = true;
      details.querySelector(".reasoning-body").appendChild(document.createTextNode(p.text));
    } else if (p.type === "answer" && answer) {
      // The reasoning folds away when the answer begins (a flag: measuring the answer's text
      // would cost more the longer it grows).
      if (details && !el._answered) details.open = false;
      el._answered = true;
      streamInto(el, answer, p.text);
    }
  }

  // While a reply streams, its markdown is rendered by the app a few times a second, and only
  // the part that can still change: the reply is split at the last blank line outside a code
  // block; what comes before is rendered once and kept ("settled"), the unfinished last block
  // is rendered again each time. Text that arrives in between shows plain after it. So a
  // render costs the length of one block, at token 10 as at token 2,000. The finished message
  // replaces all of it with the whole reply rendered at once.
  function streamInto(el, answer, text) {
    if (el._raw === undefined) {
      el._raw = answer.textContent;
      el._settledLen = 0;
      answer.textContent = "";
      el._settled = document.createElement("div");
      el._settled.className = "md-settled";
      el._tail = document.createElement("div");
      el._tail.className = "md-tail";
      el._plain = document.createTextNode(el._raw);
      el._tail.appendChild(el._plain);
      answer.append(el._settled, el._tail);
    }
    el._raw += text;
    el._plain.appendData(text);
    scheduleRender(el);
  }

  // The unfinished block is rendered again on every update; past this many characters (one
  // long paragraph, a model that never leaves a blank line) it is cut at its last line end
  // outside code, or at a space in a line that long, or (inside code) left as plain text until
  // it ends, so an update costs the same at token 10 and at token 2,000 whatever the text.
  const TAIL_MAX = 1500;

  // Where the settled part of `raw` may end: after the last blank line that is not inside a
  // fenced code block (an even number of ``` fences before it) nor inside a tool call still
  // open (a `<tool_call>` after the last `</tool_call>`); for a long last block, after its
  // last line end outside both.
  function settledEnd(raw, from) {
    // The settled part always ends outside a code block, so only fences after it count.
    const outsideCode = (at) => {
      const part = raw.slice(from, at);
      return ((part.match(/^\s*```/gm) || []).length) % 2 === 0
        && part.lastIndexOf("<tool_call>") <= part.lastIndexOf("</tool_call>");
    };
    let end = from;
    let at = raw.indexOf("\n\n", from);
    while (at !== -1) {
      if (outsideCode(at)) end = at + 2;
      at = raw.indexOf("\n\n", at + 2);
    }
    if (raw.length - end > TAIL_MAX) {
      const line = raw.lastIndexOf("\n");
      if (line >= end && outsideCode(line)) end = line + 1;
      else {
        // One long line: settle up to a space well before its end. Until the reply ends and
        // is rendered whole, the settled part shows as a paragraph of its own; in exchange the
        // webview never lays out one ever-growing paragraph again on every update.
        const space = raw.lastIndexOf(" ", raw.length - 200);
        if (space > end && outsideCode(space)) end = space + 1;
      }
    }
    return end;
  }

  async function renderMarkdown(text) {
    const body = new URLSearchParams({ text }).toString();
    if (desktop) {
      const res = await tauri.core.invoke("hx", { request: { method: "POST", url: "/render", headers: {}, body } });
      return res.body;
    }
    const res = await fetch("/render", { method: "POST", body, headers: { "Content-Type": "application/x-www-form-urlencoded" } });
    return res.text();
  }

  function scheduleRender(el) {
    if (el._renderTimer) return;
    el._renderTimer = setTimeout(async () => {
      el._renderTimer = null;
      const raw = el._raw;
      const from = el._settledLen;
      const end = settledEnd(raw, from);
      const renderTail = raw.length - end <= TAIL_MAX;
      if (end === from && !renderTail) return; // nothing to settle; the text stays plain
      let settled = "";
      let tail = "";
      try {
        if (end > from) settled = await renderMarkdown(raw.slice(from, end));
        if (renderTail) tail = await renderMarkdown(raw.slice(end));
      } catch {
        return;
      }
      const answer = el.querySelector(".answer");
      if (!answer || !el.isConnected || !el.classList.contains("streaming")) return;
      if (el._settledLen !== from) return; // a newer render got there first
      const follow = nearBottom();
      answer.classList.remove("plain");
      answer.classList.add("md");
      if (settled) el._settled.insertAdjacentHTML("beforeend", settled);
      el._settledLen = end;
      el._tail.innerHTML = tail;
      // What arrived while the app rendered (or all of a tail too long to render) stays plain
      // after it until the next render.
      el._plain = document.createTextNode(el._raw.slice(renderTail ? raw.length : end));
      el._tail.appendChild(el._plain);
      if (follow) scrollToBottom();
    }, 250);
  }

  function flushPending() {
    for (const [id, list] of pending) {
      const el = document.getElementById("msg-" + id);
      if (!el) continue;
      pending.delete(id);
      for (const p of list) {
        const cur = document.getElementById("msg-" + id);
        if (cur) apply(cur, p);
      }
    }
  }

  function messagesBox() {
    return document.getElementById("messages");
  }

  function nearBottom() {
    const m = messagesBox();
    return !m || m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function scrollToBottom() {
    const m = messagesBox();
    if (m) m.scrollTop = m.scrollHeight;
  }

  // The status bar polls every two seconds; a finished reply updates it at once.
  function refreshStatus() {
    const bar = document.getElementById("statusbar");
    if (bar && window.htmx) window.htmx.ajax("GET", bar.getAttribute("hx-get"), { target: "#statusbar", swap: "outerHTML" });
  }

  function refreshStreamingState() {
    const pane = document.getElementById("chat-pane");
    if (pane) pane.classList.toggle("is-streaming", !!pane.querySelector(".msg.streaming"));
  }

  // ---------------------------------------------------------------- after every swap
  function decorate(root) {
    for (const pre of root.querySelectorAll(".md pre")) {
      // Fenced code blocks come with their own copy button ([data-copy]).
      if (pre.closest(".code-block") || pre.querySelector(".copy-code")) continue;
      const b = document.createElement("button");
      b.type = "button";
      b.className = "btn small copy-code";
      b.textContent = "Copy";
      pre.appendChild(b);
    }
  }

  function afterSwap() {
    // File dialogs and dropping files are the desktop's; a browser never sees those buttons.
    if (desktop) for (const el of document.querySelectorAll(".desktop-only[hidden]")) el.hidden = false;
    const theme = document.getElementById("theme-state");
    if (theme) document.documentElement.dataset.theme = theme.dataset.theme || "system";
    const pane = document.getElementById("chat-pane");
    const current = pane ? pane.dataset.conversationId : undefined;
    for (const c of document.querySelectorAll(".conv[data-conversation-id]")) {
      c.classList.toggle("active", c.dataset.conversationId === current);
    }
    const m = messagesBox();
    if (m && m.querySelector(".msg")) {
      const empty = document.getElementById("empty-state");
      if (empty) empty.remove();
    }
    decorate(document);
    flushPending();
    refreshStreamingState();
  }

  // htmx fires its swap events on the element that made the request, which a swap may have
  // just removed from the page; watching the DOM itself catches every swap. Text appended to
  // the message being streamed is ignored, so streaming stays cheap.
  let lastPane = null;
  let scheduled = false;
  let scrollWanted = false;
  const observer = new MutationObserver((records) => {
    let relevant = false;
    for (const r of records) {
      const t = r.target instanceof Element ? r.target : r.target.parentElement;
      if (t && t.closest(".msg.streaming") && !(r.target instanceof Element && r.target.matches(".msg"))) continue;
      relevant = true;
      for (const n of r.addedNodes) {
        if (n instanceof Element && (n.matches(".msg.user") || n.matches(".notice"))) scrollWanted = true;
      }
    }
    if (!relevant || scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      afterSwap();
      const pane = document.getElementById("chat-pane");
      if (pane && pane !== lastPane) {
        lastPane = pane;
        scrollWanted = true;
        const prompt = document.getElementById("prompt");
        if (prompt) prompt.focus();
      }
      if (scrollWanted) {
        scrollWanted = false;
        scrollToBottom();
      }
    });
  });
  observer.observe(document.documentElement, { childList: true, subtree: true });

  // Every request says which conversation is open, so the app can update the pane when that
  // conversation is deleted.
  document.addEventListener("htmx:config:request", (evt) => {
    const pane = document.getElementById("chat-pane");
    if (pane && pane.dataset.conversationId) evt.detail.ctx.request.headers["X-Open-Conversation"] = pane.dataset.conversationId;
  });

  document.addEventListener("htmx:after:request", (evt) => {
    const ctx = evt.detail.ctx;
    const src = ctx && ctx.sourceElement;
    const ok = ctx && ctx.response && ctx.response.status < 400;
    if (src && ok && src.id === "composer") {
      const prompt = document.getElementById("prompt");
      if (prompt) prompt.value = "";
    }
  });

  function showError(text) {
    const toast = document.getElementById("toast");
    if (!toast) return;
    const div = document.createElement("div");
    div.className = "toast-error";
    div.setAttribute("role", "alert");
    div.textContent = text;
    toast.replaceChildren(div);
  }

  document.addEventListener("htmx:error", (evt) => {
    const err = evt.detail && evt.detail.error;
    showError("Something went wrong: " + (err && err.message ? err.message : String(err || "unknown error")));
  });

  // ---------------------------------------------------------------- keyboard and clicks
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && t instanceof HTMLTextAreaElement && t.name === "text") {
      e.preventDefault();
      if (t.value.trim() !== "" && t.form) t.form.requestSubmit();
      return;
    }
    // Shortcuts (listed by /help, `commands::SHORTCUTS`): each clicks or focuses what the
    // page already has, so a shortcut does exactly what its button does.
    const mod = (e.ctrlKey || e.metaKey) && !e.altKey;
    const inField = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
    const click = (sel) => {
      const el = document.querySelector(sel);
      if (el) el.click();
      return !!el;
    };
    const lastReply = () => {
      const all = document.querySelectorAll("#messages .msg.assistant:not(.streaming)");
      return all.length ? all[all.length - 1] : null;
    };
    const focusComposer = () => {
      const p = document.getElementById("prompt");
      if (p) p.focus();
      return !!p;
    };
    let done = false;
    if (mod && e.shiftKey && e.key.toLowerCase() === "o") {
      done = click("#new-chat");
    } else if (mod && !e.shiftKey && e.key.toLowerCase() === "k") {
      const s = document.getElementById("search");
      if (s) {
        s.focus();
        s.select();
        done = true;
      }
    } else if (mod && !e.shiftKey && e.key === ",") {
      done = click("#open-settings");
    } else if (mod && e.shiftKey && e.key.toLowerCase() === "c") {
      const r = lastReply();
      const b = r && r.querySelector(".js-copy-message");
      if (b) {
        b.click();
        done = true;
      }
    } else if (mod && e.shiftKey && e.key === "Enter") {
      const r = lastReply();
      const b = r && r.querySelector('[hx-post$="/regenerate"]');
      if (b) {
        b.click();
        done = true;
      }
    } else if ((e.shiftKey && e.key === "Escape") || (e.key === "/" && !mod && !inField)) {
      done = focusComposer();
    }
    if (done) {
      e.preventDefault();
      return;
    }
    if (e.key === "Escape") {
      const overlay = document.getElementById("overlay");
      if (overlay && overlay.firstChild) {
        overlay.replaceChildren();
        return;
      }
      const pane = document.getElementById("chat-pane");
      const stop = document.getElementById("stop");
      if (pane && pane.classList.contains("is-streaming") && stop) {
        e.preventDefault();
        stop.click();
      }
    }
  });

  // The system's file dialog (through the app's own command); the chosen path fills the field
  // the button names, and submits its form when the button says so (importing a model).
  async function pickFile(button) {
    let path;
    try {
      path = await tauri.core.invoke("pick_file", { kind: button.dataset.pick });
    } catch (err) {
      showError("The file dialog could not open: " + err);
      return;
    }
    const field = document.getElementById(button.dataset.pickInto);
    if (!path || !field) return;
    field.value = path;
    field.dispatchEvent(new Event("change", { bubbles: true }));
    if (button.hasAttribute("data-pick-submit") && field.form) field.form.requestSubmit();
  }

  // Export in the desktop: the app makes the file and asks where to save it (the page has no
  // downloads there). In a browser the links download as they are.
  async function saveExport(link) {
    try {
      await tauri.core.invoke("save_export", {
        conversation: link.dataset.conversation ? Number(link.dataset.conversation) : null,
        format: link.dataset.export,
      });
    } catch (err) {
      showError("The conversation could not be exported: " + err);
    }
    const menu = link.closest("details");
    if (menu) menu.open = false;
  }

  // Import: the chosen file's text goes to the app in the import form (the same request in the
  // desktop and in a browser); the app checks it and adds the conversations.
  document.addEventListener("change", async (e) => {
    const input = e.target;
    if (!(input instanceof HTMLInputElement) || input.id !== "import-file") return;
    const file = input.files && input.files[0];
    input.value = "";
    if (!file) return;
    const field = document.getElementById("import-text");
    if (!field || !field.form) return;
    try {
      field.value = await file.text();
    } catch (err) {
      showError("The file could not be read: " + err);
      return;
    }
    field.form.requestSubmit();
  });

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const ta = document.createElement("textarea");
      ta.value = text;
      document.body.appendChild(ta);
      ta.select();
      document.execCommand("copy");
      ta.remove();
    }
    if (button) {
      const old = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => (button.textContent = old), 1200);
    }
  }

  document.addEventListener("click", (e) => {
    const t = e.target instanceof Element ? e.target : null;
    if (!t) return;
    const value = t.closest(".js-copy-value");
    if (value) {
      copyText(value.dataset.value || "", value);
      return;
    }
    const fenced = t.closest("[data-copy]");
    if (fenced) {
      const block = fenced.closest(".code-block");
      const src = block && block.querySelector("pre code, pre");
      copyText(src ? src.textContent : "", fenced);
      return;
    }
    const code = t.closest(".copy-code");
    if (code) {
      const pre = code.closest("pre");
      const src = pre && (pre.querySelector("code") || pre);
      copyText(src ? src.textContent.replace(/Copy$/, "") : "", code);
      return;
    }
    const preset = t.closest(".js-preset");
    if (preset) {
      const area = document.getElementById("system-prompt");
      if (area) {
        area.value = preset.dataset.preset || "";
        area.focus();
      }
      return;
    }
    const msgCopy = t.closest(".js-copy-message");
    if (msgCopy) {
      const answer = msgCopy.closest(".msg").querySelector(".answer");
      copyText(answer ? answer.innerText : "", msgCopy);
      return;
    }
    const exportLink = desktop && t.closest("[data-export]");
    if (exportLink) {
      e.preventDefault();
      saveExport(exportLink);
      return;
    }
    const pick = desktop && t.closest("[data-pick]");
    if (pick) {
      pickFile(pick);
      return;
    }
    if (t.closest(".js-close-overlay") || t.classList.contains("overlay-backdrop")) {
      const overlay = document.getElementById("overlay");
      if (overlay) overlay.replaceChildren();
    }
  });
})();
