"""What every layer shares and that knows nothing of Redis, the cluster or HTTP: the settings
(`config`, one definition each), the errors and their one JSON shape, session ids and naming
rules, the status transition table, the clock, JSON logs, Server-Sent Events framing."""
