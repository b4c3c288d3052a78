"""Learning: training jobs, batch inference, data lists from datasets, and the annotation controller."""
