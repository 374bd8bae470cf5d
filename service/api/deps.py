"""FastAPI dependencies, exposed as Annotated aliases: SessionDep, CurrentKey, BuyerKey, ..."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from service import auth
from service.api.problems import ProblemError
from service.api.runtime import Runtime
from service.db import crud
from service.db.models import ApiKey


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="evidence-triage"'}


def current_key(
    runtime: RuntimeDep,
    authorization: Annotated[
        str | None, Header(description="`Bearer <API key>`", include_in_schema=False)
    ] = None,
) -> ApiKey:
    token = auth.parse_bearer(authorization)
    if token is None:
        raise ProblemError(
            401,
            "missing_api_key",
            "Missing API key",
            "Send your API key as `Authorization: Bearer <key>`.",
            headers=_CHALLENGE,
        )
    key = None
    if auth.looks_like_key(token):
        # A short-lived session of its own: the key check must not hold the route's transaction.
        with runtime.sessions() as session:
            key = crud.find_active_key(session, key=token)
    if key is None:
        raise ProblemError(
            401,
            "invalid_api_key",
            "Invalid API key",
            "This API key is not valid.",
            headers=_CHALLENGE,
        )
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def require_role(*roles: auth.Role) -> Callable[[ApiKey], ApiKey]:
    allowed = {role.value for role in roles}
    names = " or ".join(sorted(allowed))

    def dependency(key: CurrentKey) -> ApiKey:
        if key.role not in allowed:
            raise ProblemError(
                403,
                "forbidden_role",
                "Not allowed for this role",
                f"This action needs {auth.with_article(names)} key; "
                f"yours is {auth.with_article(key.role)} key.",
            )
        return key

    return dependency


BuyerKey = Annotated[ApiKey, Depends(require_role(auth.Role.buyer))]
ReviewerKey = Annotated[ApiKey, Depends(require_role(auth.Role.reviewer))]
AdminKey = Annotated[ApiKey, Depends(require_role(auth.Role.admin))]
BuyerOrReviewerKey = Annotated[ApiKey, Depends(require_role(auth.Role.buyer, auth.Role.reviewer))]
BuyerOrAdminKey = Annotated[ApiKey, Depends(require_role(auth.Role.buyer, auth.Role.admin))]
ReviewerOrAdminKey = Annotated[ApiKey, Depends(require_role(auth.Role.reviewer, auth.Role.admin))]
