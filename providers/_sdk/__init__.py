"""SDK plumbing the three adapters share: the SDK-backed route (``route``), the socket
reached through an SDK's client (``sockets``), the SDKs' errors classified into faults
(``classify``), decoded-size accounting (``decoding``), credentials (``credentials``)
and the attempt stream over an SDK's stream, driven by a per-API translator (``stream``).

May import: the public faces of ``lifecycle``, the SDKs, httpx/httpx2.
"""
