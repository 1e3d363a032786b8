"""The client API: HTTP/JSON for the firm's applications, a Starlette app served on trio by
:mod:`.server` (h11) (docs/api.md).

:mod:`.app` assembles it; :mod:`.errors` maps error types to statuses in one table;
:mod:`.context` is what the route modules (``routes_*``) are given instead of the app;
:mod:`.render` holds the JSON shapes they share; :mod:`.private` seals and opens the values
of private namespaces.
"""

from .app import Api

__all__ = ["Api"]
