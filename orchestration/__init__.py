"""Backstop's control plane: config model, settings, schedules, failover policy, command line."""
