"""/v1/models: the base models the workers can load and the team's fine-tuned models, by the
names chat takes (see `app.chat.model_names`)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AccessDep, SessionDep
from app.chat import catalog, model_names
from app.core.tables import JobState, Team
from app.jobs.queries import list_jobs

from .common import team_names, unix
from .errors import OpenAIError, OpenAIRoute

router = APIRouter(route_class=OpenAIRoute)

BASE_OWNER = "system"


def model_object(model_id: str, created: int | None, owned_by: str) -> dict:
    return {"id": model_id, "object": "model", "created": created or 0, "owned_by": owned_by}


def _base_model(info: catalog.BaseModelInfo) -> dict:
    return model_object(info.name, int((info.path / "config.json").stat().st_mtime), BASE_OWNER)


@router.get("/models")
def list_models(access: AccessDep, session: SessionDep) -> dict:
    names = team_names(session, access)
    fine_tuned = list_jobs(session, access, states=[JobState.succeeded], limit=None)
    data = [_base_model(info) for info in catalog.list_local_models()]
    data += [
        model_object(
            model_names.fine_tuned_model_id(job, names[job.team_id]),
            unix(job.finished_at),
            model_names.team_slug(names[job.team_id]),
        )
        for job in fine_tuned
    ]
    return {"object": "list", "data": data}


@router.get("/models/{model:path}")
def retrieve_model(model: str, access: AccessDep, session: SessionDep) -> dict:
    try:
        target = model_names.resolve(session, access, model)
    except model_names.ModelNotFound as error:
        raise OpenAIError(404, str(error), param="model", code="model_not_found") from None
    if target.weights is None:
        return _base_model(catalog.find_model(model))
    owner = model_names.team_slug(session.get(Team, target.team_id).name)
    return model_object(model, unix(target.weights.created_at), owner)
