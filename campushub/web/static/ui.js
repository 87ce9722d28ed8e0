// Small DOM helpers shared by the pages. Everything from the API goes in as text
// (textContent / text nodes / attributes), never as HTML.

import { AuthError, devToken, devUsers, gql, session } from "./api.js";

/**
 * h("button", {type: "button", class: "x", testid: "y", onclick: fn}, "text", childNode)
 * Props: class, testid, text, hidden/disabled/checked/value (properties), on* (listeners),
 * for (htmlFor); anything else is set as an attribute. Strings become text nodes.
 */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "testid") node.dataset.testid = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "for") node.htmlFor = value;
    else if (["hidden", "disabled", "checked", "value", "required"].includes(key)) node[key] = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** English text beside Chinese, marked as English for screen readers. */
export const en = (text) => h("span", { lang: "en", class: "en" }, text);

// ------------------------------------------------------------------------ status and errors
export function announce(message) {
  const region = document.getElementById("status");
  if (!region) return;
  region.textContent = "";
  // A fresh text node after clearing makes screen readers announce a repeated message too.
  setTimeout(() => {
    region.textContent = message;
  }, 30);
}

export function showError(message, items = []) {
  const region = document.getElementById("error");
  if (!region) return;
  region.replaceChildren(h("p", {}, message));
  if (items.length) region.append(h("ul", {}, items.map((item) => h("li", {}, item))));
  region.hidden = false;
  region.scrollIntoView?.({ block: "nearest" });
}

export function clearError() {
  const region = document.getElementById("error");
  if (region) {
    region.replaceChildren();
    region.hidden = true;
  }
}

export function describeError(error) {
  if (!error || !error.message) return "出错了 · Something went wrong";
  const parts = [error.message];
  const codes = { FORBIDDEN: "无权访问 · Forbidden", NOT_FOUND: "未找到 · Not found", BAD_USER_INPUT: "输入有误 · Bad input" };
  if (error.code && codes[error.code]) parts.unshift(`${codes[error.code]}：`);
  if (error.requestId) parts.push(`（请求号 Request ID: ${error.requestId}）`);
  return parts.join(" ");
}

/** Show an error; on an expired/bad token, clear the session and go back to sign-in. */
export function reportError(error, onSignedOut) {
  if (error instanceof AuthError) {
    session.clear();
    showError("登录已失效，请重新登录 · Please sign in again (your token is invalid or has expired).");
    if (onSignedOut) onSignedOut();
    return;
  }
  console.error(error);
  showError(describeError(error));
}

// ------------------------------------------------------------------------------ formatting
const TIME = new Intl.DateTimeFormat("zh-CN", {
  timeZone: "Asia/Shanghai",
  year: "numeric",
  month: "2-digit",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
  hour12: false,
});

export function formatTime(value) {
  if (!value) return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return TIME.format(date).replace(/\//g, "-");
}

export function percent(share) {
  const number = Number(share);
  return Number.isFinite(number) ? `${Math.round(number * 100)}%` : "—";
}

export const ROLE_LABELS = {
  student: "学生",
  staff: "教职工",
  college_officer: "学院教务员",
  academic_officer: "教务处",
  card_officer: "一卡通中心",
  finance_officer: "财务处",
  librarian: "图书馆",
  hr_officer: "人事处",
  steward: "数据管理员",
};

export const SOURCE_LABELS = { academic: "教务", hr: "人事", finance: "财务", card: "一卡通" };

export const WORK_ORDER_STATUS = { submitted: "已提交", processing: "办理中", ready: "可领取" };
export const CORRECTION_STATUS = { open: "待处理", accepted: "已采纳", rejected: "未采纳" };

/** "受理中 (processing)": the Chinese label with the status the API uses. */
export function statusText(labels, status) {
  return labels[status] ? `${labels[status]} (${status})` : String(status ?? "—");
}

export function sourceBadge(label, { key = null, testid = null } = {}) {
  if (!label) return null;
  return h("span", { class: "badge source", testid, title: key ? `来源记录 Source record: ${key}` : null }, label);
}

/** Parse a JSON string from the API and pretty-print it (as text). */
export function prettyJson(text) {
  if (text === null || text === undefined) return "";
  try {
    return JSON.stringify(typeof text === "string" ? JSON.parse(text) : text, null, 2);
  } catch {
    return String(text);
  }
}

/** A link from the API only if it stays on this site (no javascript:, no other hosts). */
export function safeLink(link) {
  if (!link) return null;
  try {
    const url = new URL(link, window.location.href);
    return url.origin === window.location.origin ? url.pathname + url.search + url.hash : null;
  } catch {
    return null;
  }
}

// ----------------------------------------------------------------------------------- notes
export const NOTE_MAX = 500;

/** null when the note is fine, else a message saying what is wrong with it. */
export function noteProblem(text, max = NOTE_MAX) {
  const length = [...(text || "").trim()].length;
  if (length === 0) return "请填写说明 · A note is required";
  if (length > max) return `说明不能超过 ${max} 字（现为 ${length} 字）· At most ${max} characters (now ${length})`;
  return null;
}

export const VALUE_MAX = 200;

/** null when a typed value is fine, else what is wrong with it. */
export function valueProblem(text) {
  const length = [...(text || "").trim()].length;
  if (length === 0) return "请填写此项 · This field is required";
  if (length > VALUE_MAX) return `不能超过 ${VALUE_MAX} 字（现为 ${length} 字）· At most ${VALUE_MAX} characters (now ${length})`;
  return null;
}

export const charCount = (text) => [...(text || "").trim()].length;

/** A labelled note field with a live character count and an inline error slot. */
export function noteField(id, labelText, { testid = id, rows = 2, placeholder = "", max = NOTE_MAX } = {}) {
  const count = h("span", { id: `${id}-count`, class: "hint" }, `0/${max}`);
  const problem = h("p", { id: `${id}-error`, class: "field-error", testid: `${testid}-error`, hidden: true });
  const input = h("textarea", {
    id,
    name: id,
    rows,
    testid,
    placeholder,
    "aria-describedby": `${id}-count ${id}-error`,
    oninput: () => {
      const n = charCount(input.value);
      count.textContent = `${n}/${max}`;
      count.classList.toggle("over", n > max);
      if (!problem.hidden && !noteProblem(input.value, max)) setProblem(null);
    },
  });
  const setProblem = (message) => {
    problem.textContent = message || "";
    problem.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  };
  const wrapper = h("div", { class: "note-field" }, h("label", { for: id }, labelText), input, count, problem);
  /** Check the note; on a problem show it inline and return it, else null. */
  const check = () => {
    const message = noteProblem(input.value, max);
    setProblem(message);
    return message;
  };
  return { wrapper, input, check, setProblem, value: () => input.value.trim() };
}

// --------------------------------------------------------------------------------- sign-in
/** Sign-in: demo users in development, a pasted SSO token otherwise. Calls onSignedIn(user). */
export async function renderSignIn(main, onSignedIn) {
  const section = h(
    "section",
    { class: "panel signin", "aria-labelledby": "signin-title", testid: "signin" },
    h("h1", { id: "signin-title" }, "登录 ", en("Sign in")),
  );
  main.replaceChildren(section);
  const users = await devUsers();
  if (users && users.length) {
    section.append(h("p", {}, "开发环境：请选择一位演示用户。", en("Development: choose a demo user.")));
    const list = h("ul", { class: "user-list", testid: "demo-users" });
    for (const user of users) {
      const button = h(
        "button",
        { type: "button", class: "user", testid: `signin-${user.role}` },
        h("span", { class: "user-name" }, user.name || user.subject || user.role),
        h("span", { class: "user-role" }, `${user.roleLabel || ROLE_LABELS[user.role] || ""} · ${user.role}`),
        h("span", { class: "user-subject" }, user.subject || ""),
      );
      button.addEventListener("click", async () => {
        clearError();
        for (const other of list.querySelectorAll("button")) other.disabled = true;
        try {
          const { token, user: signedIn } = await devToken(user.role);
          session.save(token, signedIn || user);
          announce(`已登录：${(signedIn || user).name || ""}`);
          onSignedIn(signedIn || user);
        } catch (error) {
          reportError(error);
          for (const other of list.querySelectorAll("button")) other.disabled = false;
        }
      });
      list.append(h("li", {}, button));
    }
    section.append(list);
    const details = h("details", { class: "token-details" }, h("summary", {}, "使用令牌登录 ", en("Sign in with a token")));
    details.append(tokenForm(onSignedIn));
    section.append(details);
  } else {
    section.append(
      h("p", {}, "请从统一身份认证（SSO）获取访问令牌并粘贴到下方。", en("Paste the bearer token you got from the university SSO.")),
      tokenForm(onSignedIn),
    );
  }
}

function tokenForm(onSignedIn) {
  const input = h("textarea", {
    id: "token",
    name: "token",
    rows: 3,
    testid: "token-input",
    autocomplete: "off",
    spellcheck: "false",
  });
  const form = h(
    "form",
    { class: "token-form", testid: "token-form" },
    h("label", { for: "token" }, "粘贴令牌 / paste token"),
    input,
    h("button", { type: "submit", class: "primary", testid: "token-submit" }, "登录 Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const token = input.value.trim().replace(/^Bearer\s+/i, "");
    if (!token) {
      showError("请粘贴令牌 · Please paste a token");
      input.focus();
      return;
    }
    session.save(token, null);
    try {
      const { me } = await gql("query SignIn { me { subject role roleLabel } }");
      const user = { subject: me.subject, role: me.role, roleLabel: me.roleLabel, name: null };
      session.save(token, user);
      announce("已登录 · Signed in");
      onSignedIn(user);
    } catch (error) {
      session.clear();
      if (error instanceof AuthError) showError("令牌无效或已过期，请重新获取 · The token is invalid or has expired");
      else reportError(error);
    }
  });
  return form;
}

/** The signed-in person in the header, with a sign-out button. */
export function renderWho(container, user, onSignOut) {
  if (!container) return;
  container.replaceChildren();
  if (!user) return;
  const name = user.name || user.subject || "";
  const role = user.roleLabel || ROLE_LABELS[user.role] || user.role || "";
  container.append(
    h("span", { class: "who-name", testid: "who" }, `${name}${role ? ` · ${role}` : ""}`),
    h(
      "button",
      {
        type: "button",
        class: "link-button",
        testid: "signout",
        onclick: () => {
          session.clear();
          announce("已退出 · Signed out");
          onSignOut();
        },
      },
      "退出 ",
      en("Sign out"),
    ),
  );
}

/** A table that stacks into labelled blocks on narrow screens (see .stack in app.css). */
export function table(headers, rows, { testid = null, caption = null } = {}) {
  const head = h("tr", {}, headers.map((header) => h("th", { scope: "col" }, header)));
  const body = h("tbody");
  for (const row of rows) {
    const tr = h("tr", { testid: row.testid || null });
    row.cells.forEach((cell, i) => {
      const td = h("td", { "data-label": headers[i] }, cell);
      tr.append(td);
    });
    body.append(tr);
  }
  return h("table", { class: "stack", testid }, caption ? h("caption", {}, caption) : null, h("thead", {}, head), body);
}
