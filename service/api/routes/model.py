"""The loaded model's card, as callers need it to read the scores (any key)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import schemas, views
from service.api.deps import CurrentKey, RuntimeDep

router = APIRouter(prefix="/v1/model", tags=["model"])
PROBLEMS = {401: {"model": schemas.Problem}}


@router.get(
    "",
    response_model=schemas.ModelPublic,
    responses=PROBLEMS,
    summary="The scoring model: version, thresholds, test metrics and limitations",
)
def get_model(runtime: RuntimeDep, key: CurrentKey) -> schemas.ModelPublic:
    del key  # every role reads scores: buyers, reviewers and admins alike
    return views.model_public(runtime.model_card)
