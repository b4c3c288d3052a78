"""Real-time inference: warm model-host processes and the files they answer with."""
