"""The users function's library: configuration, engine, query, responses (and local dev tools)."""
