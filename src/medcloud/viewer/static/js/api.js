// The viewer's only way to the server: the public API with the user's bearer token. Errors are
// thrown as ApiError carrying the API's own `error_desc`, which the page shows as is.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function errorOf(response) {
  let text = "";
  try {
    text = await response.text();
    const body = JSON.parse(text);
    if (body && typeof body.error_desc === "string") return new ApiError(body.error_desc, response.status);
    if (body && typeof body.detail === "string") return new ApiError(body.detail, response.status);
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return new ApiError(`${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`, response.status);
}

export class Api {
  constructor(org, token, onBusy = () => {}) {
    this.org = org;
    this.token = token;
    this.onBusy = onBusy;
    this.inFlight = 0;
  }

  /** Exchange an API key for a token (POST /api/v1/login). */
  static async login(apiKey) {
    const response = await fetch("/api/v1/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ngc_api_key: apiKey }),
    });
    if (!response.ok) throw await errorOf(response);
    const body = await response.json();
    return body.token;
  }

  url(path) {
    return `/api/v1/orgs/${encodeURIComponent(this.org)}${path}`;
  }

  async request(method, path, { json, body, headers = {}, busy = true } = {}) {
    const init = { method, headers: { Authorization: `Bearer ${this.token}`, ...headers } };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (body !== undefined) {
      init.body = body;
    }
    if (busy) this.onBusy(++this.inFlight);
    try {
      const response = await fetch(this.url(path), init);
      if (!response.ok) throw await errorOf(response);
      return response;
    } finally {
      if (busy) this.onBusy(--this.inFlight);
    }
  }

  async json(method, path, options) {
    return (await this.request(method, path, options)).json();
  }

  experiments() {
    return this.json("GET", "/experiments?user_only=true");
  }

  dataset(id) {
    return this.json("GET", `/datasets/${encodeURIComponent(id)}`);
  }

  datasetAction(id, action, specs) {
    return this.json("POST", `/datasets/${encodeURIComponent(id)}/jobs`, { json: { action, specs } });
  }

  async volume(datasetId, imageId) {
    const response = await this.request("GET", `/datasets/${encodeURIComponent(datasetId)}/images/${encodeURIComponent(imageId)}/volume`);
    return response.arrayBuffer();
  }

  saveLabel(datasetId, imageId, experimentId, nrrdBytes) {
    const query = experimentId ? `?experiment_id=${encodeURIComponent(experimentId)}` : "";
    return this.json("PUT", `/datasets/${encodeURIComponent(datasetId)}/images/${encodeURIComponent(imageId)}/label${query}`, {
      body: nrrdBytes, headers: { "Content-Type": "application/octet-stream" },
    });
  }

  /** Real-time inference: returns {contentType, buffer} of the multipart answer. */
  async infer(experimentId, specs) {
    const response = await this.request("POST", `/experiments/${encodeURIComponent(experimentId)}/jobs`, {
      json: { action: "inference", specs },
    });
    return { contentType: response.headers.get("Content-Type"), buffer: await response.arrayBuffer() };
  }

  jobs(experimentId) {
    return this.json("GET", `/experiments/${encodeURIComponent(experimentId)}/jobs`, { busy: false });
  }
}
