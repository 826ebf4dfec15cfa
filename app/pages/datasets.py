"""Dataset pages: the list with the upload box, and one dataset's preview and statistics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.bodies import DatasetOut
from app.api.deps import PageAccessDep, SessionDep
from app.config import get_settings
from app.contract.formats import FORMAT_TITLES
from app.core.tables import Dataset
from app.datasets.team_datasets import list_datasets
from app.pages.rendering import in_current_team, page_json, render

router = APIRouter(include_in_schema=False)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, access: PageAccessDep, session: SessionDep):
    data = {
        "datasets": [DatasetOut.of(row).model_dump(mode="json") for row in list_datasets(session, access)],
        "formats": FORMAT_TITLES,
        "max_upload_bytes": get_settings().max_upload_bytes,
    }
    return render(request, "datasets.html", access=access, session=session, active="datasets", data=page_json(data))


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(dataset_id: int, request: Request, access: PageAccessDep, session: SessionDep):
    dataset = in_current_team(request, access, session, Dataset, dataset_id)
    if not isinstance(dataset, Dataset):
        return dataset
    data = {
        "dataset": DatasetOut.of(dataset).model_dump(mode="json"),
        "formats": FORMAT_TITLES,
        "can_write": access.roles[dataset.team_id].can_write,
    }
    return render(
        request,
        "dataset.html",
        access=access,
        session=session,
        active="datasets",
        dataset=dataset,
        data=page_json(data),
    )
