// Verify a document (/verify): anyone, no sign-in. `?code=` fills the code and checks it.

import { verifyCode } from "./api.js";
import { WORK_ORDER_STATUS, announce, clearError, describeError, en, formatTime, h, showError, statusText } from "./ui.js";

const form = document.getElementById("verify-form");
const input = document.getElementById("code");
const result = document.getElementById("result");

/** Tidy what people type: upper case, no spaces; 16 bare characters get their dashes. */
function normalise(raw) {
  const code = raw.trim().toUpperCase().replace(/\s+/g, "");
  return /^[A-Z2-7]{16}$/.test(code) ? code.match(/.{4}/g).join("-") : code;
}

function showResult(valid, ...children) {
  result.dataset.valid = String(valid);
  result.className = `verify-result panel ${valid ? "valid" : "invalid"}`;
  result.replaceChildren(...children.filter(Boolean));
  result.hidden = false;
}

async function check(raw) {
  clearError();
  const code = normalise(raw);
  input.value = code;
  if (!code) {
    showError("请输入验证码 · Please enter a verification code");
    input.focus();
    return;
  }
  const url = new URL(window.location.href);
  url.searchParams.set("code", code);
  window.history.replaceState(null, "", url);
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const { status, body } = await verifyCode(code);
    if (status === 200 && body && body.valid === true) {
      showResult(
        true,
        h("h2", { id: "result-title", testid: "verify-valid" }, "✓ 有效 ", en("Valid")),
        h("p", {}, "本材料由学校签发，内容如下。", en("The university issued this document, with these contents.")),
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "材料 ", en("Document")),
          h("dd", { testid: "verify-form-title" }, body.formTitle ?? "—"),
          h("dt", {}, "签发时间 ", en("Issued")),
          h("dd", {}, formatTime(body.issuedAt)),
          h("dt", {}, "状态 ", en("Status")),
          h("dd", {}, statusText(WORK_ORDER_STATUS, body.status)),
          h("dt", {}, "申请人 ", en("Applicant")),
          h("dd", { testid: "verify-requester" }, body.requesterName ?? "—"),
        ),
        h(
          "dl",
          { class: "facts", testid: "verify-fields" },
          (body.fields || []).map((field) => [
            h("dt", {}, field.label),
            h("dd", {}, field.display ?? "—", field.sourceLabel ? [" ", h("span", { class: "badge source" }, field.sourceLabel)] : null),
          ]),
        ),
      );
      announce("验证码有效 · The code is valid");
    } else {
      const message = body && typeof body.message === "string" ? body.message : `HTTP ${status}`;
      showResult(
        false,
        h("h2", { id: "result-title", testid: "verify-invalid" }, "✗ 无效 ", en("Invalid")),
        h("p", { testid: "verify-message" }, message),
        status === 400 ? h("p", { class: "hint" }, "验证码应为 4 组、每组 4 个字符（A–Z、2–7），以“-”分隔。", en("Expected 4 groups of 4 characters (A–Z, 2–7) separated by '-'.")) : null,
      );
      announce("验证码无效 · The code is not valid");
    }
  } catch (error) {
    result.hidden = true;
    showError(describeError(error));
  } finally {
    button.disabled = false;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  check(input.value);
});

const initial = new URLSearchParams(window.location.search).get("code");
if (initial) check(initial);
