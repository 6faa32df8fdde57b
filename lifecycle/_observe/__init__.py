"""Observers: hooks and what is built on them, and the pictures of the machine.

``hooks`` (``LifecycleHooks``, ``RunView`` and the dispatcher), ``otel``
(OpenTelemetry), ``recorder`` (JSON-lines recordings) and ``report`` (reading them
back), ``diagram`` (Mermaid and DOT from the transition tables), ``log_filter``
(redacting the SDKs' log records).

May import: ``_core`` (and ``_drivers.route`` for types only). Public faces:
``lifecycle.otel``, ``lifecycle.record``, ``lifecycle.diagrams``.
"""
