"""Domain logic. Services take the session, the gateway and the clock; they never commit."""
