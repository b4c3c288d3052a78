// The learning panel: the experiment's annotation job, its rounds and train jobs, refreshed by
// itself so the annotator sees the model improve. Reads GET /experiments/{id}/jobs only.

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function metric(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "–";
}

function progress(job) {
  const r = job.result || {};
  if (typeof r.epoch === "number" && typeof r.max_epoch === "number") return `epoch ${r.epoch}/${r.max_epoch}`;
  return (r.detailed_status && r.detailed_status.message) || "";
}

export class LearningPanel {
  constructor(root, api, { intervalMs = 3000, onError = () => {} } = {}) {
    this.root = root;
    this.api = api;
    this.intervalMs = intervalMs;
    this.onError = onError;
    this.experimentId = null;
    this.timer = null;
    this.lastBest = null;
  }

  show(experimentId) {
    this.experimentId = experimentId;
    this.stop();
    this.refresh();
    this.timer = setInterval(() => this.refresh(), this.intervalMs);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    if (!this.experimentId) return;
    let jobs;
    try {
      jobs = (await this.api.jobs(this.experimentId)).jobs || [];
    } catch (error) {
      this.onError(error);
      return;
    }
    this.render(jobs);
  }

  render(jobs) {
    const annotation = jobs.filter((j) => j.action === "annotation")
      .sort((a, b) => String(b.created_on).localeCompare(String(a.created_on)))[0];
    const summary = this.root.querySelector("[data-summary]");
    const body = this.root.querySelector("tbody");
    body.replaceChildren();
    if (!annotation) {
      summary.textContent = "No annotation job on this experiment: saved labels are kept, but nothing learns from them.";
      return;
    }
    const trains = jobs.filter((j) => j.parent_id === annotation.id && j.action === "train")
      .sort((a, b) => String(a.created_on).localeCompare(String(b.created_on)));
    const finished = trains.filter((j) => j.status === "Done");
    const metrics = finished.map((j) => (j.result || {}).key_metric).filter((m) => typeof m === "number");
    const best = metrics.length ? Math.max(...metrics) : null;
    summary.textContent = `Annotation job ${annotation.status} · rounds ${finished.length} · best key metric ${metric(best)}`;
    summary.dataset.status = annotation.status;
    summary.dataset.rounds = String(finished.length);
    trains.forEach((job, index) => {
      const row = document.createElement("tr");
      row.dataset.status = job.status;
      row.append(cell(String(index + 1)), cell(job.status), cell(progress(job)), cell(metric((job.result || {}).key_metric)));
      body.append(row);
    });
    this.lastBest = best;
  }
}
