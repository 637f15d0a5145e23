"""Thin adapters around the core: netlink, systemd-networkd over D-Bus, the journal and
sd_notify, and the files the daemon reads and writes (config, snapshot, status)."""
