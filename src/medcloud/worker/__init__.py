"""The trusted side of a job: its worker reads the ticket, stages the inputs, runs the sandboxed model
process (`medcloud.modelrun`), relays its MLflow records and uploads its results. Never model code."""
