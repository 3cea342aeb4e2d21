"""Who may call what, and with which requests: contract policies, field and
well-known-type validation, and the audit log."""
