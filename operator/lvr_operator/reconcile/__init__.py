"""Reconcile logic as pure functions: (custom resource, observed children, now) -> Plan.

A Plan holds the whole new status, the child actions (create/delete, all idempotent by name), the
Events to post, and when to look again. The kopf handlers only observe, call these, and apply.
"""
