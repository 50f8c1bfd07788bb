"""Bearer-token check for the routes that use the model on a client's behalf.

Only ``/classify`` and ``/feedback`` are guarded: health, readiness and metrics stay open so
orchestrators and Prometheus need no secret. The comparison is constant-time
(:func:`hmac.compare_digest`) so response timing does not leak the key.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import Unauthorized
from service.state import ServiceState, get_state

# Declares the scheme in the OpenAPI document (components.securitySchemes) so clients and
# generators know the routes take a bearer token. auto_error=False: it never answers by
# itself; require_api_key below decides, in the service's error shape, and only when a key is
# configured.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="Authorization: Bearer <key>; required only when the server has ABN_API_KEY",
)


async def require_api_key(
    request: Request,
    state: ServiceState = Depends(get_state),
    _declared: HTTPAuthorizationCredentials | None = Security(BEARER),
) -> None:
    """FastAPI dependency: 401 unless ``Authorization: Bearer <ABN_API_KEY>`` (when set)."""
    check_api_key(request.headers.getlist("authorization"), state.settings.api_key)


def check_api_key(given: list[str], key: SecretStr | None) -> None:
    """401 unless ``key`` is unset or ``given`` (the request's Authorization headers) is one
    ``Bearer <key>``. Plain Python, for the lean ``/classify`` path and the dependency alike."""
    if key is None:
        return
    if len(given) > 1:  # which one counts would depend on the proxy chain: neither does
        raise Unauthorized("give the Authorization header once: 'Authorization: Bearer <key>'")
    header = given[0] if given else ""
    if not header:
        raise Unauthorized("this server needs 'Authorization: Bearer <key>'")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    # Starlette decodes header bytes as latin-1; encoding back gives the bytes that were sent.
    if not hmac.compare_digest(token.encode("latin-1"), key.get_secret_value().encode("utf-8")):
        raise Unauthorized("the bearer token is not valid")
