"""`netd-hook run`: the event loop (service) and the owners beside it, one job each."""
