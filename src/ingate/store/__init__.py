"""What outlives a request: the audit (`store.audit`: SQLite, PostgreSQL) and sessions
(`store.sessions`: memory, Redis), one protocol each, chosen by a URL."""
