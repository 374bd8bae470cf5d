// HTTP client for the Evidence Triage REST API (design.md section 4).
// One job: turn calls into authenticated requests and problem+json errors into ApiError.

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0 when the request never reached the server)
   * @param {string} title short summary from the problem document or the status line
   * @param {string} detail what was wrong, written for a person
   */
  constructor(status, title, detail) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
  }
}

/** A readable sentence from a problem+json `detail`, which FastAPI may send as a list. */
export function describeDetail(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        if (typeof item === "string") return item;
        const where = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "body").join(".") : "";
        return where ? `${where}: ${item.msg}` : item.msg ?? JSON.stringify(item);
      })
      .join("; ");
  }
  return JSON.stringify(detail);
}

async function errorFromResponse(response) {
  let title = response.statusText || `HTTP ${response.status}`;
  let detail = "";
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      const body = await response.json();
      title = body.title || title;
      detail = describeDetail(body.detail);
    } catch {
      // A broken error body still leaves the status line to report.
    }
  } else if (type.startsWith("text/plain")) {
    detail = (await response.text()).slice(0, 300);
  }
  return new ApiError(response.status, title, detail);
}

/**
 * @param {{ getKey: () => string | null, onUnauthorized?: (error: ApiError) => void }} options
 */
export function createClient({ getKey, onUnauthorized }) {
  async function send(path, { method = "GET", json, signal } = {}) {
    const headers = { Accept: "application/json, application/problem+json" };
    const key = getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, signal });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "Network error", "the server could not be reached");
    }
    if (!response.ok) {
      const error = await errorFromResponse(response);
      if (response.status === 401 && onUnauthorized) onUnauthorized(error);
      throw error;
    }
    return response;
  }

  async function getJson(path, options) {
    return (await send(path, options)).json();
  }

  return {
    queue({ lane, status, reason, limit = 25, cursor } = {}, signal) {
      const params = new URLSearchParams();
      for (const [name, value] of Object.entries({ lane, status, reason, limit, cursor })) {
        if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
      }
      return getJson(`/v1/queue?${params}`, { signal });
    },
    claim(claimId, signal) {
      return getJson(`/v1/claims/${encodeURIComponent(claimId)}`, { signal });
    },
    listing(listingId, signal) {
      return getJson(`/v1/listings/${encodeURIComponent(listingId)}`, { signal });
    },
    /** The loaded model's card: version, score thresholds, test metrics, limitations. */
    model() {
      return getJson("/v1/model");
    },
    audit(claimId, signal) {
      return getJson(`/v1/claims/${encodeURIComponent(claimId)}/audit`, { signal });
    },
    review(claimId, review) {
      return send(`/v1/claims/${encodeURIComponent(claimId)}/reviews`, {
        method: "POST",
        json: review,
      }).then((response) => response.json());
    },
    /** Image bytes as a Blob: <img> cannot send the Authorization header itself. */
    async imageBlob(path) {
      return (await send(path)).blob();
    },
  };
}
