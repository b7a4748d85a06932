"""End-to-end policy scenarios: real handshakes, a geo folder, a policy, the real command."""
