"""The operator's commands: the command line, what it shows and does (status, diff, replay,
doctor, metrics)."""
