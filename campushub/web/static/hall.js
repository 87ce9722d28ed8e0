// The service hall (/hall): sign in, pick a form, check what the hub filled in, submit;
// then follow the work order, see my data and who read it.

import { downloadPdf, gql, session } from "./api.js";
import {
  CORRECTION_STATUS,
  ROLE_LABELS,
  WORK_ORDER_STATUS,
  announce,
  clearError,
  en,
  formatTime,
  h,
  noteField,
  percent,
  renderSignIn,
  renderWho,
  reportError,
  safeLink,
  showError,
  sourceBadge,
  statusText,
  table,
  valueProblem,
} from "./ui.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let user = null;

// ----------------------------------------------------------------------------------- router
const ROUTES = [
  [/^#?\/?$/, "catalog", () => showCatalog()],
  [/^#\/form\/([^/]+)$/, "catalog", (id) => showForm(id)],
  [/^#\/work-orders?\/([^/]+)$/, "my-orders", (id) => showWorkOrder(id)],
  [/^#\/my-orders$/, "my-orders", () => showMyOrders()],
  [/^#\/my-data$/, "my-data", () => showMyData()],
];

async function route() {
  clearError();
  if (!session.token()) return signIn();
  const hash = window.location.hash || "#/";
  const entry = ROUTES.find(([pattern]) => pattern.test(hash)) || ROUTES[0];
  const [pattern, name, show] = entry;
  const args = (hash.match(pattern) || []).slice(1).map(decodeURIComponent);
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren(h("p", { class: "loading" }, "加载中… ", en("Loading…")));
  try {
    await show(...args);
  } catch (error) {
    main.replaceChildren();
    reportError(error, signIn);
  }
}

function signIn() {
  if (main.querySelector('[data-testid="signin"]')) return; // already there (several requests may fail at once)
  user = null;
  nav.hidden = true;
  renderWho(document.getElementById("who"), null);
  document.getElementById("banner").replaceChildren();
  renderSignIn(main, (signedIn) => {
    start(signedIn);
  }).catch((error) => reportError(error));
}

async function start(signedIn) {
  user = signedIn || session.user() || {};
  nav.hidden = false;
  renderWho(document.getElementById("who"), user, signIn);
  if (await showNotifications()) route();
}

function heading(text, english) {
  const node = h("h1", { tabindex: "-1" }, text, english ? [" ", en(english)] : null);
  return node;
}

function focusHeading() {
  const first = main.querySelector("h1");
  if (first) first.focus({ preventScroll: false });
}

// ---------------------------------------------------------------------------- notifications
/** Unread notifications as a banner, then marked read. false when the token is no good. */
async function showNotifications() {
  const slot = document.getElementById("banner");
  slot.replaceChildren();
  let data;
  try {
    data = await gql("query Notifications { me { notifications { id message link createdAt readAt } } }");
  } catch (error) {
    if (error.name !== "AuthError") return true; // the banner is a courtesy: go on without it
    reportError(error, signIn);
    return false;
  }
  const unread = (data.me.notifications || []).filter((note) => !note.readAt);
  if (!unread.length) return true;
  const list = h("ul", {});
  for (const note of unread) {
    const href = safeLink(note.link);
    list.append(
      h(
        "li",
        { testid: "notification" },
        h("span", {}, note.message),
        " ",
        h("span", { class: "meta" }, formatTime(note.createdAt)),
        href ? [" ", h("a", { href }, "查看 ", en("View"))] : null,
      ),
    );
  }
  const banner = h(
    "section",
    { class: "banner", "aria-labelledby": "banner-title", testid: "notifications" },
    h("h2", { id: "banner-title" }, "新消息 ", en("Notifications")),
    list,
    h(
      "button",
      { type: "button", class: "link-button", testid: "dismiss-notifications", onclick: () => banner.remove() },
      "知道了 ",
      en("Dismiss"),
    ),
  );
  slot.append(banner);
  announce(`您有 ${unread.length} 条新消息 · ${unread.length} new notification(s)`);
  try {
    await gql("mutation MarkRead { markNotificationsRead }");
  } catch (error) {
    console.warn("markNotificationsRead failed", error);
  }
  return true;
}

// ---------------------------------------------------------------------------------- catalog
async function showCatalog() {
  const { forms } = await gql(
    "query Catalog { forms { id title titleEn subject fields { name label labelEn prefilled } } }",
  );
  const list = h("ul", { class: "cards", testid: "catalog" });
  const coverageSlots = new Map();
  for (const form of forms) {
    const slot = h("p", { class: "coverage", testid: `coverage-${form.id}` }, "自动填写 …");
    coverageSlots.set(form.id, slot);
    list.append(
      h(
        "li",
        { class: "card" },
        h(
          "h2",
          {},
          h("a", { href: `#/form/${encodeURIComponent(form.id)}`, testid: `form-link-${form.id}` }, form.title),
        ),
        h("p", { class: "en", lang: "en" }, form.titleEn),
        h("p", { class: "meta" }, `${form.fields.length} 项 `, en(`${form.fields.length} fields`)),
        slot,
      ),
    );
  }
  main.replaceChildren(
    heading("办事事项", "Services"),
    h("p", { class: "lead" }, "选择事项，表单将由学校已有数据自动填写，您只需核对。", en("Pick a service: the form fills itself from what the university already knows; you only check it.")),
    forms.length ? list : h("p", { class: "empty" }, "暂无您可办理的事项 · No services for your role"),
  );
  focusHeading();
  if (!forms.length) return;
  try {
    const { coverage } = await gql(
      "query Coverage { coverage { form { id } population share fields { name share } } }",
    );
    for (const item of coverage) {
      const slot = coverageSlots.get(item.form.id);
      if (!slot) continue;
      slot.replaceChildren(
        h("strong", {}, `自动填写 ${percent(item.share)}`),
        " ",
        en(`prefilled for ${item.population} people`),
      );
      slot.title = item.fields.map((field) => `${field.name}: ${percent(field.share)}`).join("\n");
    }
  } catch (error) {
    if (error.name === "AuthError") throw error;
    for (const slot of coverageSlots.values()) slot.textContent = "自动填写 —";
  }
}

// ------------------------------------------------------------------------------------- form
const QUALITY_TEXT = { OK: "", FLAGGED: "需核实 · Please check", MISSING: "无法自动填写 · Cannot be prefilled" };

async function showForm(formId) {
  const { prefill } = await gql(
    `query Prefill($formId: ID!) { prefill(formId: $formId) {
      form { id title titleEn } filled
      fields { name label labelEn value display source sourceLabel sourceKey asOf quality notes } } }`,
    { formId },
  );
  const { form, fields } = prefill;
  const rows = fields.map(fieldRow);
  const submit = h("button", { type: "submit", class: "primary", testid: "submit" }, "提交 ", en("Submit"));
  const confirmAll = h(
    "button",
    {
      type: "button",
      testid: "confirm-all",
      onclick: () => {
        for (const row of rows) row.confirmIfUndecided?.();
        announce("已确认所有未标记有误的项 · Confirmed every field not marked wrong");
      },
    },
    "全部确认 ",
    en("Confirm all"),
  );
  const formNode = h(
    "form",
    { class: "prefill-form", testid: `form-${form.id}`, novalidate: true },
    rows.map((row) => row.node),
    h("div", { class: "actions" }, confirmAll, submit),
  );
  formNode.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const problems = [];
    const answers = [];
    let firstInvalid = null;
    for (const row of rows) {
      const result = row.answer();
      if (result.problem) {
        problems.push(`${row.label}：${result.problem}`);
        firstInvalid ||= result.focus;
      } else {
        answers.push(result.answer);
      }
    }
    if (problems.length) {
      showError("请检查以下各项后再提交 · Please fix these before submitting:", problems);
      firstInvalid?.focus();
      return;
    }
    submit.disabled = true;
    try {
      const { submitWorkOrder } = await gql(
        `mutation Submit($formId: ID!, $answers: [AnswerInput!]!) {
          submitWorkOrder(formId: $formId, answers: $answers) { id status verificationCode } }`,
        { formId: form.id, answers },
      );
      announce(`已提交 · Submitted: ${submitWorkOrder.id}`);
      window.location.hash = `#/work-order/${encodeURIComponent(submitWorkOrder.id)}`;
    } catch (error) {
      submit.disabled = false;
      reportError(error, signIn);
    }
  });
  main.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← 办事事项 ", en("Services"))),
    heading(form.title, form.titleEn),
    h(
      "p",
      { class: "lead", testid: "filled-count" },
      `已自动填写 ${prefill.filled}/${fields.length} 项。请逐项确认，发现错误请标记“有误”并说明。`,
      en(`${prefill.filled} of ${fields.length} fields filled for you. Confirm each one, or mark it wrong and say why.`),
    ),
    formNode,
  );
  focusHeading();
}

/** One form field: what the hub filled (or why it could not), and the person's answer. */
function fieldRow(field) {
  const name = field.name;
  const id = `f-${name}`;
  const quality = field.quality || "OK";
  const legend = h("legend", {}, field.label, " ", en(field.labelEn));
  const node = h("fieldset", { class: `field q-${quality.toLowerCase()}`, testid: `field-${name}`, "data-quality": quality }, legend);

  if (quality === "MISSING") {
    const reasonId = `${id}-reason`;
    const problemNode = h("p", { id: `${id}-error`, class: "field-error", testid: `value-error-${name}`, hidden: true });
    const input = h("input", {
      id: `${id}-value`,
      name: `${id}-value`,
      type: "text",
      testid: `value-${name}`,
      "aria-describedby": `${reasonId} ${id}-error`,
      required: true,
    });
    node.append(
      h(
        "p",
        { id: reasonId, class: "reason", testid: `reason-${name}` },
        h("span", { class: "badge missing" }, "需填写 ", en("To fill in")),
        " ",
        (field.notes || []).join("；") || QUALITY_TEXT.MISSING,
      ),
      h("label", { for: `${id}-value` }, `请填写${field.label} `, en(`Enter ${field.labelEn}`)),
      input,
      problemNode,
    );
    return {
      node,
      label: field.label,
      answer() {
        const value = input.value.trim();
        const problem = valueProblem(value);
        problemNode.textContent = problem || "";
        problemNode.hidden = !problem;
        if (problem) input.setAttribute("aria-invalid", "true");
        else input.removeAttribute("aria-invalid");
        return problem ? { problem, focus: input } : { answer: { name, value, confirmed: false, note: null } };
      },
    };
  }

  // Filled by the hub: the value, its source and as-of time, any quality notes.
  const shown = field.display ?? field.value ?? "";
  node.append(
    h(
      "div",
      { class: "value-row" },
      h("span", { class: "value", testid: `display-${name}` }, shown === "" ? "（空）" : shown),
      sourceBadge(field.sourceLabel, { key: field.sourceKey, testid: `source-${name}` }),
      h("span", { class: "meta", testid: `asof-${name}` }, `截至 ${formatTime(field.asOf)}`),
    ),
  );
  if (quality === "FLAGGED") {
    node.append(
      h(
        "div",
        { class: "flag", testid: `flag-${name}` },
        h("strong", {}, "⚠ 需核实 ", en("Please check")),
        h("ul", { testid: `notes-${name}` }, (field.notes || []).map((note) => h("li", {}, note))),
      ),
    );
  }
  const choiceName = `${id}-choice`;
  const confirm = h("input", { type: "radio", name: choiceName, id: `${id}-confirm`, value: "confirm", testid: `confirm-${name}` });
  const wrong = h("input", { type: "radio", name: choiceName, id: `${id}-wrong`, value: "wrong", testid: `wrong-${name}` });
  const note = noteField(`${id}-note`, ["哪里有误？（必填，500 字以内） ", en("What is wrong? (required, up to 500 characters)")], {
    testid: `note-${name}`,
  });
  const ownError = h("p", { id: `${id}-own-error`, class: "field-error", testid: `value-error-${name}`, hidden: true });
  const own = h("input", {
    type: "text",
    id: `${id}-own`,
    name: `${id}-own`,
    testid: `value-${name}`,
    "aria-describedby": `${id}-own-error`,
  });
  const wrongBox = h(
    "div",
    { class: "wrong-box", testid: `wrong-box-${name}`, hidden: true },
    note.wrapper,
    h("label", { for: `${id}-own` }, "正确的内容（本人申报，必填） ", en("Your own value (self-declared, required)")),
    own,
    ownError,
  );
  const choiceError = h("p", { class: "field-error", testid: `choice-error-${name}`, hidden: true });
  const update = () => {
    wrongBox.hidden = !wrong.checked;
    node.classList.toggle("is-confirmed", confirm.checked);
    node.classList.toggle("is-wrong", wrong.checked);
    if (confirm.checked || wrong.checked) choiceError.hidden = true;
  };
  confirm.addEventListener("change", update);
  wrong.addEventListener("change", () => {
    update();
    if (wrong.checked) note.input.focus();
  });
  node.append(
    h(
      "div",
      { class: "choices" },
      h("label", { for: `${id}-confirm`, class: "choice" }, confirm, " 确认 ", en("Confirm")),
      h("label", { for: `${id}-wrong`, class: "choice" }, wrong, " 有误 ", en("Wrong")),
    ),
    choiceError,
    wrongBox,
  );
  return {
    node,
    label: field.label,
    confirmIfUndecided() {
      if (!wrong.checked) {
        confirm.checked = true;
        update();
      }
    },
    answer() {
      if (confirm.checked) return { answer: { name, value: null, confirmed: true, note: null } };
      if (wrong.checked) {
        const problem = note.check();
        const ownProblem = valueProblem(own.value);
        ownError.textContent = ownProblem || "";
        ownError.hidden = !ownProblem;
        if (ownProblem) own.setAttribute("aria-invalid", "true");
        else own.removeAttribute("aria-invalid");
        if (problem) return { problem, focus: note.input };
        if (ownProblem) return { problem: ownProblem, focus: own };
        return { answer: { name, value: own.value.trim(), confirmed: false, note: note.value() } };
      }
      const problem = "请选择“确认”或“有误” · Choose Confirm or Wrong";
      choiceError.textContent = problem;
      choiceError.hidden = false;
      return { problem, focus: confirm };
    },
  };
}

// ------------------------------------------------------------------------------- work order
async function showWorkOrder(id) {
  const { workOrder } = await gql(
    `query WorkOrder($id: ID!) { workOrder(id: $id) {
      id formId formTitle status createdAt updatedAt verificationCode requesterName
      fields { name label value display sourceLabel asOf confirmed selfDeclared note } } }`,
    { id },
  );
  if (!workOrder) {
    main.replaceChildren(heading("未找到该业务", "Work order not found"));
    return;
  }
  const order = workOrder;
  const download = h("button", { type: "button", class: "primary", testid: "download-pdf" }, "下载 PDF ", en("Download PDF"));
  download.addEventListener("click", async () => {
    clearError();
    download.disabled = true;
    try {
      const name = await downloadPdf(order.id, order.formId);
      announce(`已下载 · Downloaded ${name}`);
    } catch (error) {
      reportError(error, signIn);
    } finally {
      download.disabled = false;
    }
  });
  const verifyHref = `/verify?code=${encodeURIComponent(order.verificationCode || "")}`;
  const rows = (order.fields || []).map((field) => ({
    testid: `order-field-${field.name}`,
    cells: [
      field.label,
      field.display ?? field.value ?? "—",
      [sourceBadge(field.sourceLabel), field.asOf ? h("span", { class: "meta" }, ` ${formatTime(field.asOf)}`) : null],
      [
        field.selfDeclared
          ? h("span", { class: "badge self" }, "本人申报 ", en("Self-declared"))
          : field.confirmed
            ? h("span", { class: "badge ok" }, "已确认 ", en("Confirmed"))
            : null,
        field.note ? h("span", { class: "note-text" }, ` ${field.note}`) : null,
      ],
    ],
  }));
  main.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/my-orders" }, "← 我的业务 ", en("My work orders"))),
    heading(order.formTitle || order.formId, "Work order"),
    h(
      "dl",
      { class: "facts", testid: "work-order" },
      h("dt", {}, "业务编号 ", en("No.")),
      h("dd", { testid: "work-order-id" }, order.id),
      h("dt", {}, "状态 ", en("Status")),
      h("dd", {}, h("span", { class: `badge status-${order.status}`, testid: "work-order-status", "data-status": order.status }, statusText(WORK_ORDER_STATUS, order.status))),
      h("dt", {}, "申请人 ", en("Applicant")),
      h("dd", {}, order.requesterName || "—"),
      h("dt", {}, "提交时间 ", en("Submitted")),
      h("dd", {}, formatTime(order.createdAt)),
      h("dt", {}, "更新时间 ", en("Updated")),
      h("dd", {}, formatTime(order.updatedAt)),
      h("dt", {}, "验证码 ", en("Verification code")),
      h("dd", {}, h("code", { class: "code", testid: "verification-code" }, order.verificationCode || "—"), " ", h("a", { href: verifyHref, testid: "verify-link" }, "在线核验 ", en("Verify"))),
    ),
    h("div", { class: "actions" }, download),
    h("h2", {}, "表单内容 ", en("Form contents")),
    table(["项目 Field", "内容 Value", "来源 Source", "确认 Confirmation"], rows, { testid: "work-order-fields" }),
  );
  focusHeading();
}

// -------------------------------------------------------------------------------- my orders
async function showMyOrders() {
  const { me } = await gql(
    `query MyOrders { me {
      workOrders { id formId formTitle status createdAt verificationCode }
      notifications { id message link createdAt readAt }
      corrections { id formId field label sourceLabel currentValue claimedValue note status responseNote decidedAt } } }`,
  );
  const orders = me.workOrders || [];
  const corrections = me.corrections || [];
  const notifications = me.notifications || [];
  const orderList = orders.length
    ? table(
        ["业务 Service", "状态 Status", "提交时间 Submitted", "验证码 Code"],
        orders.map((order) => ({
          testid: `work-order-${order.id}`,
          cells: [
            h("a", { href: `#/work-order/${encodeURIComponent(order.id)}`, testid: `work-order-link-${order.id}` }, order.formTitle || order.formId),
            h("span", { class: `badge status-${order.status}`, testid: `work-order-status-${order.id}`, "data-status": order.status }, statusText(WORK_ORDER_STATUS, order.status)),
            formatTime(order.createdAt),
            h("code", { class: "code" }, order.verificationCode || "—"),
          ],
        })),
        { testid: "my-work-orders" },
      )
    : h("p", { class: "empty" }, "还没有业务 · No work orders yet");
  const notificationList = notifications.length
    ? h(
        "ul",
        { class: "items", testid: "notification-history" },
        notifications.map((note) => {
          const href = safeLink(note.link);
          return h(
            "li",
            { class: "item", testid: `notification-${note.id}` },
            note.message,
            " ",
            h("span", { class: "meta" }, formatTime(note.createdAt)),
            href ? [" ", h("a", { href }, "查看 ", en("View"))] : null,
          );
        }),
      )
    : h("p", { class: "empty" }, "没有消息 · No notifications");
  main.replaceChildren(
    heading("我的业务", "My work orders"),
    h("section", { "aria-labelledby": "orders-title" }, h("h2", { id: "orders-title" }, "业务进度 ", en("Work orders")), orderList),
    correctionsSection(corrections),
    h("section", { "aria-labelledby": "notes-title" }, h("h2", { id: "notes-title" }, "消息 ", en("Notifications")), notificationList),
  );
  focusHeading();
}

/** My correction requests and what became of them. */
function correctionsSection(corrections) {
  const list = corrections.length
    ? h(
        "ul",
        { class: "items", testid: "my-corrections" },
        corrections.map((c) =>
          h(
            "li",
            { class: "item", testid: `correction-${c.id}`, "data-status": c.status },
            h("p", {}, h("strong", {}, c.label || c.field), " ", sourceBadge(c.sourceLabel), " ", h("span", { class: `badge status-${c.status}`, testid: `correction-status-${c.id}` }, statusText(CORRECTION_STATUS, c.status))),
            h("p", {}, "系统记录 ", en("On record"), `：${c.currentValue ?? "—"} → 本人申报 `, en("Claimed"), `：${c.claimedValue ?? "—"}`),
            h("p", { class: "meta" }, "说明 ", en("Note"), `：${c.note ?? ""}`),
            c.responseNote || c.decidedAt
              ? h("p", { class: "response", testid: `correction-response-${c.id}` }, "回复 ", en("Reply"), `（${formatTime(c.decidedAt)}）：${c.responseNote ?? ""}`)
              : null,
          ),
        ),
      )
    : h("p", { class: "empty" }, "没有更正申请 · No correction requests");
  return h(
    "section",
    { "aria-labelledby": "corrections-title" },
    h("h2", { id: "corrections-title" }, "我的更正申请 ", en("My correction requests")),
    list,
  );
}

// ---------------------------------------------------------------------------------- my data
// The "my data" field names are entity paths; the hall's own words for them.
const DATA_GROUPS = { person: "个人信息 Person", student: "学籍 Student", staff: "人事 Staff", card: "一卡通 Campus card", fees: "缴费 Fees", grades: "成绩 Grades" };
const DATA_LABELS = {
  "person.name": "姓名", "person.sex": "性别", "person.birth_date": "出生日期", "person.ethnicity": "民族",
  "person.political_status": "政治面貌", "person.id_type": "证件类型", "person.id_number": "身份证件号", "person.phone": "手机号码", "person.email": "电子邮箱",
  "student.student_no": "学号", "student.college": "学院", "student.major": "专业", "student.class": "班级",
  "student.education_level": "培养层次", "student.entry_date": "入学年月", "student.status": "学籍状态",
  "staff.staff_no": "工号", "staff.department": "部门", "staff.position": "岗位", "staff.title": "职称",
  "staff.hire_date": "入职日期", "staff.employment_status": "在职状态",
  "card.card_no": "卡号", "card.status": "卡状态", "card.balance": "余额",
  "fees.billed": "应缴金额", "fees.paid": "已缴金额", "fees.outstanding": "欠费金额", "fees.settled": "是否缴清",
  "grades.courses": "课程数", "grades.credits": "学分", "grades.average_score": "平均成绩", "grades.last_term": "最近学期",
};
const OUTCOMES = { allowed: "允许 allowed", denied: "拒绝 denied" };

function purposeText(purpose) {
  if (!purpose) return "—";
  if (purpose === "self") return "本人查看 (self)";
  if (purpose === "steward") return "数据管理 (steward)";
  if (purpose.startsWith("form:")) return `办理表单 (${purpose})`;
  if (purpose.startsWith("department:")) return `部门查询 (${purpose})`;
  return purpose;
}

async function showMyData() {
  const { me } = await gql(
    `query MyData { me { subject role roleLabel
      data { name label value display sourceLabel asOf quality notes }
      corrections { id formId field label sourceLabel currentValue claimedValue note status responseNote decidedAt }
      accessLog(first: 50) { nodes { at actor actorRole purpose entity fields outcome } } } }`,
  );
  const groups = new Map();
  for (const item of me.data || []) {
    const group = item.name.split(".")[0];
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(item);
  }
  const sections = [...groups].map(([group, items]) =>
    h(
      "section",
      { class: "data-group", testid: `data-group-${group}` },
      h("h3", {}, DATA_GROUPS[group] || group),
      h(
        "dl",
        { class: "data-list" },
        items.map((item) => [
          h("dt", {}, item.label && item.label !== item.name ? item.label : DATA_LABELS[item.name] || item.name),
          h(
            "dd",
            { testid: `data-${item.name}`, "data-quality": item.quality },
            item.quality === "MISSING"
              ? h("span", { class: "meta" }, `无记录 · none — ${(item.notes || []).join("；")}`)
              : [
                  h("span", { class: "value" }, item.display ?? item.value ?? "—"),
                  " ",
                  sourceBadge(item.sourceLabel),
                  " ",
                  h("span", { class: "meta" }, `截至 ${formatTime(item.asOf)}`),
                  item.quality === "FLAGGED"
                    ? h("span", { class: "flag inline" }, `⚠ ${(item.notes || []).join("；")}`)
                    : null,
                ],
          ),
        ]),
      ),
    ),
  );
  const log = me.accessLog?.nodes || [];
  main.replaceChildren(
    heading("我的数据", "My data"),
    h("p", { class: "lead" }, `${me.roleLabel || ROLE_LABELS[me.role] || me.role} · ${me.subject}。学校各系统中关于您的数据及其来源。`, en("What the university's systems hold about you, and where each fact comes from.")),
    h("section", { "aria-labelledby": "data-title", testid: "my-data" }, h("h2", { id: "data-title" }, "数据 ", en("Data")), sections.length ? sections : h("p", { class: "empty" }, "暂无数据 · No data")),
    correctionsSection(me.corrections || []),
    h(
      "section",
      { "aria-labelledby": "log-title" },
      h("h2", { id: "log-title" }, "访问记录 ", en("Who read my data")),
      h("p", { class: "meta" }, "最近 50 条 · The latest 50 entries"),
      log.length
        ? table(
            ["时间 When", "访问者 Who", "角色 Role", "用途 Purpose", "数据 Data", "结果 Outcome"],
            log.map((entry, i) => ({
              testid: `access-${i}`,
              cells: [
                formatTime(entry.at),
                entry.actor,
                ROLE_LABELS[entry.actorRole] ? `${ROLE_LABELS[entry.actorRole]} (${entry.actorRole})` : entry.actorRole,
                purposeText(entry.purpose),
                `${entry.entity}: ${(entry.fields || []).join(", ")}`,
                OUTCOMES[entry.outcome] || entry.outcome,
              ],
            })),
            { testid: "access-log" },
          )
        : h("p", { class: "empty", testid: "access-log" }, "暂无访问记录 · Nobody has read your data yet"),
    ),
  );
  focusHeading();
}

// ------------------------------------------------------------------------------------ start
window.addEventListener("hashchange", () => {
  if (user) route();
});
if (session.token()) start(session.user());
else signIn();
