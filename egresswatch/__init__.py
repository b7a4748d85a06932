"""egresswatch: network egress auditor and data residency verifier for LLM APIs."""

__version__ = "0.1.0"
