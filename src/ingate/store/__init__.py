"""What outlives a request: the audit (`store.audit`: SQLite, PostgreSQL), sessions
(`store.sessions`: memory, Redis) and the keys' limits' counts (`store.limits`: memory, Redis), one
protocol each, chosen by a URL."""
