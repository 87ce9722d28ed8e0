// The desk (/desk): stewards watch the sources, checks, quarantine, identity conflicts and
// correction requests; officers move the work orders they may process along.

import { gql, session } from "./api.js";
import {
  CORRECTION_STATUS,
  SOURCE_LABELS,
  WORK_ORDER_STATUS,
  announce,
  clearError,
  describeError,
  en,
  formatTime,
  h,
  noteField,
  prettyJson,
  renderSignIn,
  renderWho,
  reportError,
  showError,
  statusText,
  table,
} from "./ui.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const DAGSTER = dagsterBase();

function dagsterBase() {
  const raw = (document.querySelector('meta[name="dagster-url"]')?.content || "").trim();
  try {
    const url = new URL(raw);
    if (url.protocol === "http:" || url.protocol === "https:") return url.href.replace(/\/+$/, "");
  } catch {
    // not a URL (e.g. an unfilled template): use the default
  }
  return "http://127.0.0.1:3000";
}

const dagsterLink = (path, testid, ...label) =>
  h("a", { href: `${DAGSTER}/${path}`, target: "_blank", rel: "noopener noreferrer", class: "external", testid }, ...label);
const assetPath = (...parts) => `assets/${parts.map(encodeURIComponent).join("/")}`;

// ------------------------------------------------------------------------------- sign-in
function signIn() {
  if (main.querySelector('[data-testid="signin"]')) return; // already there (several requests may fail at once)
  nav.hidden = true;
  nav.replaceChildren();
  renderWho(document.getElementById("who"), null);
  renderSignIn(main, () => start()).catch((error) => reportError(error));
}

async function start() {
  clearError();
  main.replaceChildren(h("p", { class: "loading" }, "加载中… ", en("Loading…")));
  let me;
  try {
    ({ me } = await gql("query DeskMe { me { subject role roleLabel } }"));
  } catch (error) {
    reportError(error, signIn);
    return;
  }
  const user = { ...(session.user() || {}), subject: me.subject, role: me.role, roleLabel: me.roleLabel };
  renderWho(document.getElementById("who"), user, signIn);

  const sections = [];
  if (me.role === "steward") {
    sections.push(
      section("sources", "数据源与检查", "Sources and checks", loadSources),
      section("quarantine", "隔离区", "Quarantine", loadQuarantine),
      section("conflicts", "身份冲突", "Identity conflicts", loadConflicts),
    );
  }
  if (me.role !== "student") {
    sections.push(
      section("corrections", "更正申请", "Correction requests", loadCorrections),
      section("work-orders", "待办业务", "Work orders", loadWorkOrders),
    );
  }
  main.replaceChildren(
    h("h1", { tabindex: "-1" }, "工作台 ", en("Desk")),
    h("p", { class: "lead" }, `${me.roleLabel} · ${me.subject}`),
  );
  if (!sections.length) {
    main.append(h("p", { class: "empty", testid: "desk-empty" }, "工作台供工作人员使用。", en("The desk is for staff. "), h("a", { href: "/hall" }, "前往办事大厅 Go to the service hall")));
    return;
  }
  for (const s of sections) main.append(s.node);
  renderNav(sections);
  await Promise.all(sections.map((s) => s.load()));
  renderNav(sections.filter((s) => s.node.isConnected));
  if (!main.querySelector("section")) {
    main.append(h("p", { class: "empty", testid: "desk-empty" }, "没有您可处理的事项 · Nothing here for your role"));
  }
}

function renderNav(sections) {
  nav.replaceChildren(...sections.map((s) => h("a", { href: `#sec-${s.id}`, testid: `nav-${s.id}` }, s.title)));
  nav.hidden = sections.length < 2;
}

/** A page section whose loader fills its body; a FORBIDDEN answer removes it (not for this role). */
function section(id, title, titleEn, loader) {
  const body = h("div", { class: "section-body" }, h("p", { class: "loading" }, "加载中…"));
  const node = h(
    "section",
    { id: `sec-${id}`, class: "panel", "aria-labelledby": `sec-${id}-title`, testid: `section-${id}` },
    h("h2", { id: `sec-${id}-title` }, title, " ", en(titleEn)),
    body,
  );
  const load = async () => {
    try {
      await loader(body);
    } catch (error) {
      if (error.code === "FORBIDDEN") {
        node.remove();
        return;
      }
      body.replaceChildren(h("p", { class: "field-error" }, describeError(error)));
      reportError(error, signIn);
    }
  };
  return { id, title, node, load };
}

/** Run an action from a button: errors shown, the button disabled meanwhile. */
async function act(button, action) {
  clearError();
  button.disabled = true;
  try {
    await action();
  } catch (error) {
    reportError(error, signIn);
  } finally {
    button.disabled = false;
  }
}

/** A list with "load more": fetchPage(after) -> {nodes, pageInfo}; render(node) -> element. */
function pagedList(list, fetchPage, render, { testid, emptyText }) {
  let after = null;
  const more = h("button", { type: "button", testid: `${testid}-more`, hidden: true }, "加载更多 ", en("Load more"));
  const empty = h("p", { class: "empty", hidden: true }, emptyText);
  const next = async () => {
    const { nodes, pageInfo } = await fetchPage(after);
    for (const node of nodes) list.append(render(node));
    after = pageInfo.endCursor;
    more.hidden = !pageInfo.hasNextPage;
    empty.hidden = list.childElementCount > 0;
  };
  more.addEventListener("click", () => act(more, next));
  return {
    nodes: [list, empty, more],
    async reset() {
      after = null;
      list.replaceChildren();
      await next();
    },
  };
}

// ------------------------------------------------------------------------------ sources
async function loadSources(body) {
  const { steward } = await gql(
    `query Streams { steward { streams { source sourceLabel stream lastSuccessAt fresh freshnessWindowMinutes
      lastRunStatus lastRunFetched lastRunQuarantined openQuarantine } } }`,
  );
  const streams = steward.streams;
  const overdue = streams.filter((s) => !s.fresh).length;
  const rows = streams.map((s) => ({
    testid: `stream-${s.source}-${s.stream}`,
    cells: [
      [h("span", { class: "badge source" }, s.sourceLabel || SOURCE_LABELS[s.source] || s.source), ` ${s.stream}`],
      formatTime(s.lastSuccessAt),
      h(
        "span",
        { class: `badge ${s.fresh ? "ok" : "bad"}`, testid: `fresh-${s.source}-${s.stream}`, "data-fresh": String(s.fresh) },
        s.fresh ? "及时 Fresh" : "超时 Overdue",
        ` (≤${s.freshnessWindowMinutes} min)`,
      ),
      s.lastRunStatus ? `${s.lastRunStatus} · 获取 ${s.lastRunFetched ?? 0} · 隔离 ${s.lastRunQuarantined ?? 0}` : "—",
      String(s.openQuarantine),
      dagsterLink(assetPath("raw", s.source, s.stream), `dagster-${s.source}-${s.stream}`, "Dagster ↗"),
    ],
  }));
  const checksBody = h("div", { testid: "checks" });
  const failingOnly = h("input", { type: "checkbox", id: "failing-only", checked: true, testid: "failing-only" });
  failingOnly.addEventListener("change", () => loadChecks(checksBody, failingOnly.checked).catch((e) => reportError(e, signIn)));
  body.replaceChildren(
    h("p", { class: "summary", testid: "sources-summary" }, `${streams.length} 个数据流，${overdue} 个超时 · ${streams.length} streams, ${overdue} overdue`),
    table(["数据源 Source", "最近同步 Last sync", "时效 Freshness", "上次运行 Last run", "待处理隔离 Open quarantine", "Dagster"], rows, { testid: "streams" }),
    h("h3", {}, "质量检查 ", en("Quality checks")),
    h("p", {}, h("label", { for: "failing-only", class: "inline-check" }, failingOnly, " 只看未通过 ", en("Failing only"))),
    checksBody,
  );
  await loadChecks(checksBody, true);
}

async function loadChecks(body, failingOnly) {
  const { steward } = await gql(
    `query Checks($failingOnly: Boolean) { steward { checks(failingOnly: $failingOnly) {
      entity name passed blocking counts failingKeys evaluatedAt } } }`,
    { failingOnly },
  );
  const checks = steward.checks;
  const failing = checks.filter((c) => !c.passed && c.blocking).length;
  const warned = checks.filter((c) => !c.passed && !c.blocking).length;
  const rows = checks.map((c) => ({
    testid: `check-${c.entity}-${c.name}`,
    cells: [
      `${c.entity} · ${c.name}`,
      verdictBadge(c),
      details("计数 Counts", prettyJson(c.counts)),
      c.passed ? "—" : details("失败样本 Failing keys", prettyJson(c.failingKeys)),
      formatTime(c.evaluatedAt),
      dagsterLink(`${assetPath("unified", c.entity)}?view=checks`, `dagster-check-${c.entity}-${c.name}`, "Dagster ↗"),
      !c.passed && c.name === "row_count" ? acceptRowCountForm(c.entity, JSON.parse(c.counts).row_count) : "—",
    ],
  }));
  body.replaceChildren(
    h("p", { class: "summary", testid: "checks-summary" }, `${failing} 项检查未通过，${warned} 项警告 · ${failing} failing, ${warned} warning${warned === 1 ? "" : "s"}`),
    checks.length
      ? table(["检查 Check", "结果 Result", "计数 Counts", "失败 Failing keys", "时间 Evaluated", "Dagster", "操作 Action"], rows, { testid: "checks-table" })
      : h("p", { class: "empty" }, failingOnly ? "全部检查通过 · Every check passes" : "尚无检查结果 · No check results yet"),
  );
}

/** A failed check that only warns holds nothing back: shown apart from the failures that block. */
function verdictBadge(check) {
  if (check.passed) return h("span", { class: "badge ok" }, "通过 Passed");
  if (!check.blocking) return h("span", { class: "badge missing", testid: `warning-${check.entity}-${check.name}` }, "警告 Warning");
  return h("span", { class: "badge bad" }, "未通过 Failing");
}

/** A table that shrank keeps failing its row-count check until a steward accepts its size as it is now. */
function acceptRowCountForm(entity, rowCount) {
  const words = { note: ["接受原因 ", "Why the drop is real"], button: ["接受当前行数 ", "Accept current size"], done: "已接受，下次检查起生效 · Accepted from the next evaluation" };
  return resolveForm(`rc-${entity}`, `row-count-reason-${entity}`, `accept-row-count-${entity}`, async (reason) => {
    const { acceptRowCount } = await gql(
      "mutation AcceptRowCount($entity: String!, $rowCount: Int!, $reason: String!) { acceptRowCount(entity: $entity, rowCount: $rowCount, reason: $reason) { entity rowCount } }",
      { entity, rowCount, reason },
    );
    announce(`已接受 ${entity} 的当前行数 ${acceptRowCount.rowCount} · Row count accepted`);
  }, words);
}

function details(summary, text) {
  return h("details", {}, h("summary", {}, summary), h("pre", { class: "json" }, text));
}

// ---------------------------------------------------------------------------- quarantine
async function loadQuarantine(body) {
  const source = h(
    "select",
    { id: "q-source", name: "source", testid: "quarantine-source" },
    h("option", { value: "" }, "全部 All"),
    Object.entries(SOURCE_LABELS).map(([key, label]) => h("option", { value: key }, `${label} ${key}`)),
  );
  const stream = h("input", { id: "q-stream", name: "stream", type: "text", testid: "quarantine-stream" });
  const reason = h("input", { id: "q-reason", name: "reason", type: "text", testid: "quarantine-reason-filter" });
  const resolved = h("input", { id: "q-resolved", name: "resolved", type: "checkbox", testid: "quarantine-resolved" });
  const filterForm = h(
    "form",
    { class: "filters", testid: "quarantine-filter" },
    h("div", {}, h("label", { for: "q-source" }, "数据源 Source"), source),
    h("div", {}, h("label", { for: "q-stream" }, "数据流 Stream"), stream),
    h("div", {}, h("label", { for: "q-reason" }, "原因包含 Reason contains"), reason),
    h("div", {}, h("label", { for: "q-resolved", class: "inline-check" }, resolved, " 已处理的 Resolved")),
    h("button", { type: "submit" }, "筛选 ", en("Filter")),
  );
  const filter = () => ({
    source: source.value || null,
    stream: stream.value.trim() || null,
    reasonContains: reason.value.trim() || null,
    resolved: resolved.checked,
  });
  const list = h("ul", { class: "items", testid: "quarantine-list" });
  const pager = pagedList(
    list,
    async (after) =>
      (
        await gql(
          `query Quarantine($filter: QuarantineFilter, $after: String) { steward {
            quarantine(first: 20, filter: $filter, after: $after) {
              nodes { id source stream sourceKey reason payload firstSeen lastSeen timesSeen }
              pageInfo { hasNextPage endCursor } } } }`,
          { filter: filter(), after },
        )
      ).steward.quarantine,
    (record) => quarantineItem(record, resolved.checked),
    { testid: "quarantine", emptyText: "隔离区为空 · Nothing in quarantine" },
  );
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = filterForm.querySelector("button");
    act(button, () => pager.reset());
  });
  body.replaceChildren(filterForm, ...pager.nodes);
  await pager.reset();
}

function quarantineItem(record, resolved) {
  const id = record.id;
  const item = h(
    "li",
    { class: "item", testid: `quarantine-${id}` },
    h("h3", {}, h("span", { class: "badge source" }, SOURCE_LABELS[record.source] || record.source), ` ${record.source}/${record.stream} · ${record.sourceKey}`),
    h("p", { class: "reason", testid: `quarantine-reason-${id}` }, record.reason),
    h("p", { class: "meta" }, `首次 first ${formatTime(record.firstSeen)} · 最近 last ${formatTime(record.lastSeen)} · ${record.timesSeen} 次 times`),
    h("details", {}, h("summary", {}, "原始数据 ", en("Payload")), h("pre", { class: "json", testid: `payload-${id}` }, prettyJson(record.payload))),
  );
  if (!resolved) {
    item.append(
      resolveForm(`q-${id}`, `quarantine-note-${id}`, `resolve-quarantine-${id}`, async (resolution) => {
        await gql("mutation ResolveQuarantine($id: ID!, $resolution: String!) { resolveQuarantine(id: $id, resolution: $resolution) { id } }", { id, resolution });
        announce(`已处理隔离记录 ${id} · Quarantined record resolved`);
      }),
    );
  }
  return item;
}

const RESOLVE_WORDS = { note: ["处理说明 ", "Resolution"], button: ["标记已处理 ", "Resolve"], done: "已处理 Resolved" };

/** A note and a button; on success the form is replaced by "已处理" (or `words.done`). */
function resolveForm(idPrefix, noteTestid, buttonTestid, submit, words = RESOLVE_WORDS) {
  const note = noteField(`${idPrefix}-resolution`, [words.note[0], en(words.note[1])], { testid: noteTestid, max: 256 });
  const button = h("button", { type: "submit", testid: buttonTestid }, words.button[0], en(words.button[1]));
  const form = h("form", { class: "inline-form" }, note.wrapper, button);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearError();
    const problem = note.check();
    if (problem) {
      showError(problem);
      note.input.focus();
      return;
    }
    act(button, async () => {
      await submit(note.value());
      form.replaceWith(h("p", { class: "badge ok", testid: `${buttonTestid}-done` }, words.done));
    });
  });
  return form;
}

// ----------------------------------------------------------------------------- conflicts
async function loadConflicts(body) {
  const status = h(
    "select",
    { id: "c-status", testid: "filter-conflicts-status" },
    h("option", { value: "open" }, "待处理 open"),
    h("option", { value: "resolved" }, "已解决 resolved"),
  );
  const list = h("ul", { class: "items", testid: "conflict-list" });
  const pager = pagedList(
    list,
    async (after) =>
      (
        await gql(
          `query Conflicts($status: String, $after: String) { steward {
            conflicts(status: $status, first: 20, after: $after) {
              nodes { id kind subject personId details status openedAt }
              pageInfo { hasNextPage endCursor } } } }`,
          { status: status.value, after },
        )
      ).steward.conflicts,
    (conflict) => conflictItem(conflict),
    { testid: "conflicts", emptyText: "没有身份冲突 · No conflicts" },
  );
  status.addEventListener("change", () => pager.reset().catch((e) => reportError(e, signIn)));
  body.replaceChildren(h("p", {}, h("label", { for: "c-status" }, "状态 Status "), status), ...pager.nodes);
  await pager.reset();
}

function conflictItem(conflict) {
  const id = conflict.id;
  const item = h(
    "li",
    { class: "item", testid: `conflict-${id}` },
    h("h3", {}, `${conflict.kind} · ${conflict.subject}`),
    h("p", { class: "meta" }, `人员 person #${conflict.personId ?? "—"} · 发现于 opened ${formatTime(conflict.openedAt)} · ${conflict.status}`),
    h("details", { open: true }, h("summary", {}, "详情 ", en("Details")), h("pre", { class: "json", testid: `conflict-details-${id}` }, prettyJson(conflict.details))),
  );
  if (conflict.status === "open") {
    item.append(
      resolveForm(`c-${id}`, `conflict-note-${id}`, `resolve-conflict-${id}`, async (resolution) => {
        await gql("mutation ResolveConflict($id: ID!, $resolution: String!) { resolveConflict(id: $id, resolution: $resolution) { id } }", { id, resolution });
        announce(`已解决冲突 ${id} · Conflict resolved`);
      }),
    );
  }
  return item;
}

// --------------------------------------------------------------------------- corrections
async function loadCorrections(body) {
  const status = h(
    "select",
    { id: "corr-status", testid: "filter-corrections-status" },
    Object.entries(CORRECTION_STATUS).map(([key, label]) => h("option", { value: key }, `${label} ${key}`)),
  );
  const list = h("ul", { class: "items", testid: "correction-list" });
  const pager = pagedList(
    list,
    async (after) =>
      (
        await gql(
          `query Corrections($status: String, $after: String) { corrections(status: $status, first: 20, after: $after) {
            nodes { id formId field label source sourceLabel currentValue claimedValue note status requester
                    createdAt decidedAt decidedBy responseNote }
            pageInfo { hasNextPage endCursor } } }`,
          { status: status.value, after },
        )
      ).corrections,
    correctionItem,
    { testid: "corrections", emptyText: "没有更正申请 · No correction requests" },
  );
  status.addEventListener("change", () => pager.reset().catch((e) => reportError(e, signIn)));
  body.replaceChildren(h("p", {}, h("label", { for: "corr-status" }, "状态 Status "), status), ...pager.nodes);
  await pager.reset();
}

function correctionItem(c) {
  const id = c.id;
  const statusNode = h("span", { class: `badge status-${c.status}`, testid: `correction-status-${id}`, "data-status": c.status }, statusText(CORRECTION_STATUS, c.status));
  const item = h(
    "li",
    { class: "item", testid: `correction-${id}` },
    h("h3", {}, `${c.label || c.field} `, h("span", { class: "badge source" }, c.sourceLabel || c.source), " ", statusNode),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "系统记录 ", en("On record")),
      h("dd", { testid: `correction-current-${id}` }, c.currentValue ?? "—"),
      h("dt", {}, "本人申报 ", en("Claimed")),
      h("dd", { testid: `correction-claimed-${id}` }, c.claimedValue ?? "—"),
      h("dt", {}, "说明 ", en("Note")),
      h("dd", { testid: `correction-note-text-${id}` }, c.note ?? ""),
      h("dt", {}, "申请人 ", en("Requester")),
      h("dd", {}, `${c.requester ?? "—"} · ${formatTime(c.createdAt)} · ${c.formId}`),
      c.decidedAt ? [h("dt", {}, "处理 ", en("Decided")), h("dd", {}, `${formatTime(c.decidedAt)} · ${c.decidedBy ?? ""} · ${c.responseNote ?? ""}`)] : null,
    ),
  );
  if (c.status !== "open") return item;
  const note = noteField(`corr-${id}-note`, ["回复申请人（必填） ", en("Note back to the person (required)")], { testid: `correction-note-${id}` });
  const accept = h("button", { type: "button", class: "primary", testid: `accept-${id}` }, "采纳 ", en("Accept"));
  const reject = h("button", { type: "button", class: "danger", testid: `reject-${id}` }, "驳回 ", en("Reject"));
  const decide = (button, verdict) => {
    clearError();
    const problem = note.check();
    if (problem) {
      showError(problem);
      note.input.focus();
      return;
    }
    act(button, async () => {
      const { decideCorrection } = await gql(
        "mutation Decide($id: ID!, $accept: Boolean!, $note: String!) { decideCorrection(id: $id, accept: $accept, note: $note) { id status } }",
        { id, accept: verdict, note: note.value() },
      );
      statusNode.textContent = statusText(CORRECTION_STATUS, decideCorrection.status);
      statusNode.dataset.status = decideCorrection.status;
      statusNode.className = `badge status-${decideCorrection.status}`;
      decision.replaceWith(h("p", { class: "meta" }, `已回复 · Replied: ${note.value()}`));
      announce(`更正申请 ${id}：${statusText(CORRECTION_STATUS, decideCorrection.status)}`);
    });
  };
  accept.addEventListener("click", () => decide(accept, true));
  reject.addEventListener("click", () => decide(reject, false));
  const decision = h("div", { class: "decision" }, note.wrapper, h("div", { class: "actions" }, accept, reject));
  item.append(decision);
  return item;
}

// --------------------------------------------------------------------------- work orders
const WO_HEADERS = ["业务 Service", "申请人 Applicant", "提交 Submitted", "状态 Status", "操作 Actions"];

async function loadWorkOrders(body) {
  const status = h(
    "select",
    { id: "wo-status", testid: "filter-work-orders-status" },
    h("option", { value: "" }, "全部 All"),
    Object.entries(WORK_ORDER_STATUS).map(([key, label]) => h("option", { value: key }, `${label} ${key}`)),
  );
  const rows = h("tbody", { testid: "work-orders" });
  const tableNode = h(
    "table",
    { class: "stack", testid: "work-orders-table" },
    h("thead", {}, h("tr", {}, WO_HEADERS.map((header) => h("th", { scope: "col" }, header)))),
    rows,
  );
  const pager = pagedList(
    rows,
    async (after) =>
      (
        await gql(
          `query WorkOrders($status: String, $after: String) { workOrders(status: $status, first: 20, after: $after) {
            nodes { id formId formTitle status createdAt requesterName } pageInfo { hasNextPage endCursor } } }`,
          { status: status.value || null, after },
        )
      ).workOrders,
    workOrderRow,
    { testid: "work-orders", emptyText: "没有待办业务 · No work orders" },
  );
  status.addEventListener("change", () => pager.reset().catch((e) => reportError(e, signIn)));
  const [, empty, more] = pager.nodes;
  body.replaceChildren(h("p", {}, h("label", { for: "wo-status" }, "状态 Status "), status), tableNode, empty, more);
  await pager.reset();
}

function workOrderRow(order) {
  const id = order.id;
  let current = order.status;
  const statusNode = h("span", { class: "badge", testid: `status-${id}` });
  const processing = h("button", { type: "button", testid: `processing-${id}` }, "受理 ", en("Processing"));
  const ready = h("button", { type: "button", class: "primary", testid: `ready-${id}` }, "可领取 ", en("Ready"));
  const show = (status) => {
    current = status;
    statusNode.textContent = statusText(WORK_ORDER_STATUS, status);
    statusNode.dataset.status = status;
    statusNode.className = `badge status-${status}`;
    processing.disabled = status === "processing" || status === "ready";
    ready.disabled = status === "ready";
  };
  const setStatus = async (next) => {
    clearError();
    processing.disabled = ready.disabled = true;
    try {
      const { setWorkOrderStatus } = await gql(
        "mutation SetStatus($id: ID!, $status: String!) { setWorkOrderStatus(id: $id, status: $status) { id status } }",
        { id, status: next },
      );
      show(setWorkOrderStatus.status);
      announce(`业务 ${id}：${statusText(WORK_ORDER_STATUS, setWorkOrderStatus.status)}`);
    } catch (error) {
      show(current);
      reportError(error, signIn);
    }
  };
  processing.addEventListener("click", () => setStatus("processing"));
  ready.addEventListener("click", () => setStatus("ready"));
  show(order.status);
  const cells = [
    [h("strong", {}, order.formTitle || order.formId), h("br"), h("code", { class: "code" }, id)],
    order.requesterName || "—",
    formatTime(order.createdAt),
    statusNode,
    h("div", { class: "actions" }, processing, ready),
  ];
  return h("tr", { testid: `work-order-${id}` }, cells.map((cell, i) => h("td", { "data-label": WO_HEADERS[i] }, cell)));
}

// --------------------------------------------------------------------------------- start
if (session.token()) start();
else signIn();
