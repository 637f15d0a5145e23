"""The pure core: plain data and decisions (what belongs to the snapshot, what to replay and
when). Nothing here does I/O or imports a third-party package or any other part of netd-hook."""
