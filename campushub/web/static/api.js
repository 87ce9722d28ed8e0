// The hub's API as the pages use it: GraphQL at /graphql, a few REST endpoints, and the
// bearer token, which lives in sessionStorage only (the page never sees a password).

const TOKEN_KEY = "campushub.token";
const USER_KEY = "campushub.user";

export class ApiError extends Error {
  constructor(message, { code = null, requestId = null, status = 0 } = {}) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.requestId = requestId;
    this.status = status;
  }
}

/** The token is missing, bad or expired (HTTP 401 / UNAUTHENTICATED): sign in again. */
export class AuthError extends ApiError {
  constructor(message = "登录已失效，请重新登录 · Your sign-in has expired, please sign in again", details = {}) {
    super(message, { code: "UNAUTHENTICATED", status: 401, ...details });
    this.name = "AuthError";
  }
}

export const session = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  user() {
    try {
      return JSON.parse(sessionStorage.getItem(USER_KEY) || "null");
    } catch {
      return null;
    }
  },
  save(token, user) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(USER_KEY, JSON.stringify(user || null));
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
  },
};

function authHeaders() {
  const token = session.token();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function request(url, options = {}) {
  try {
    return await fetch(url, { credentials: "same-origin", ...options });
  } catch {
    throw new ApiError("无法连接服务器，请稍后再试 · Cannot reach the server, please try again", { code: "NETWORK" });
  }
}

async function jsonOf(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/** Run a GraphQL operation; resolves to `data`, rejects with ApiError / AuthError. */
export async function gql(query, variables = {}) {
  const response = await request("/graphql", {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/graphql-response+json, application/json",
      ...authHeaders(),
    },
    body: JSON.stringify({ query, variables }),
  });
  const body = await jsonOf(response);
  const errors = body && Array.isArray(body.errors) ? body.errors : [];
  const first = errors[0] || {};
  const extensions = first.extensions || {};
  if (response.status === 401 || extensions.code === "UNAUTHENTICATED") {
    session.clear();
    throw new AuthError(undefined, { requestId: extensions.requestId || response.headers.get("X-Request-ID") });
  }
  if (errors.length) {
    throw new ApiError(String(first.message || "请求失败 · Request failed"), {
      code: extensions.code || null,
      requestId: extensions.requestId || response.headers.get("X-Request-ID"),
      status: response.status,
    });
  }
  if (!response.ok || !body || !body.data) {
    throw new ApiError(`服务器错误 · Server error (HTTP ${response.status})`, {
      status: response.status,
      requestId: response.headers.get("X-Request-ID"),
    });
  }
  return body.data;
}

/** Development only: the demo users. null when the server has none (production: 404). */
export async function devUsers() {
  let response;
  try {
    response = await fetch("/dev/users", { headers: { Accept: "application/json" } });
  } catch {
    return null;
  }
  if (!response.ok) return null;
  const users = await jsonOf(response);
  return Array.isArray(users) ? users : null;
}

/** Development only: a token for a demo role -> {token, user}. */
export async function devToken(role) {
  const response = await request(`/dev/token?role=${encodeURIComponent(role)}`, {
    headers: { Accept: "application/json" },
  });
  const body = await jsonOf(response);
  if (!response.ok || !body || typeof body.token !== "string") {
    throw new ApiError(`无法获取演示令牌 · Could not get a demo token (HTTP ${response.status})`, {
      status: response.status,
    });
  }
  return body;
}

/** Fetch a work order's PDF with the bearer header and save it as `<formId>-<id>.pdf`. */
export async function downloadPdf(id, formId) {
  const response = await request(`/api/work-orders/${encodeURIComponent(id)}/pdf`, {
    headers: { Accept: "application/pdf", ...authHeaders() },
  });
  if (response.status === 401) {
    session.clear();
    throw new AuthError();
  }
  if (!response.ok) {
    const body = await jsonOf(response);
    const message = body && typeof body.message === "string" ? body.message : `HTTP ${response.status}`;
    throw new ApiError(`PDF 下载失败 · PDF download failed: ${message}`, { status: response.status });
  }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = `${formId}-${id}.pdf`;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return link.download;
}

/** Check a verification code (no auth) -> {status, body}; body is {valid, ...} or {valid: false, message}. */
export async function verifyCode(code) {
  const response = await request(`/api/verify?code=${encodeURIComponent(code)}`, {
    headers: { Accept: "application/json" },
  });
  const body = await jsonOf(response);
  return { status: response.status, body };
}
