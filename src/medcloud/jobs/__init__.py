"""Jobs: train, batch inference and annotation, with a state table, a runner and a reaper."""
