"""Multi-step pipelines: a job whose steps each run as a job of their own."""
