"""Errors of every store (local or S3), shared by the layers above."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store answered, but not usefully (bad bucket, permissions, ...). Never retried silently."""


class StoreUnavailable(StoreError):
    """The store could not be reached in time (connection refused, timeout, DNS)."""
