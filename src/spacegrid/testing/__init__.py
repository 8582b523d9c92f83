"""Helpers users can reuse in their own tests: a real nats-server fixture and an `eventually` assertion helper."""
