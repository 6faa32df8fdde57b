"""Every text a kept exception shows a logger or an error tracker, for the tests that
look for secrets in them."""

from __future__ import annotations


def exception_texts(exc: BaseException | None) -> list[str]:
    """Its text, its args, the SDK's message and body, the headers of the request and
    response it was raised for, and the same of each of its causes."""
    texts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc), repr(exc.args)]
        texts += [repr(getattr(exc, name, None)) for name in ("message", "body")]
        for holder in (getattr(exc, "request", None), getattr(exc, "response", None)):
            try:
                request = getattr(holder, "request", holder)
            except RuntimeError:  # an httpx response built without its request
                request = None
            headers = getattr(request, "headers", None)
            if headers is not None:
                texts.append(repr(dict(headers.items())))
        exc = exc.__cause__ or exc.__context__
    return texts
