"""Backstop's shared domain: config model and loading, units, settings, errors, the run,
occurrence and saveset records, task and queue names and Redis keys."""
