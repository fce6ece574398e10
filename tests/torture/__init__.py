"""The torture, fault and bad-input suites (docs/reliability.md). ``make test`` runs a fast
slice of them; ``make torture`` (SIDECAR_TORTURE=1) runs the long version."""

from __future__ import annotations
