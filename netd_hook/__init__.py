"""netd-hook: keeps the VPC CNI's policy rules and routes alive across systemd-networkd reconfigures."""

__version__ = "0.5.0"
