"""A job from config to report: objects from the config (build), the steps, the pipeline of work
items, the acceptance checks and the report."""
