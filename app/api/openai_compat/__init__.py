"""An OpenAI-compatible API under /v1, so that the official `openai` package, and code
written for OpenAI's service, drive tunelab::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<a tunelab API token>")
    file = client.files.create(file=open("data.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=file.id)
    ...
    client.chat.completions.create(model=job.fine_tuned_model, messages=[...])

Files, fine-tuning jobs (with events and checkpoints), models and chat completions, each in
a module of its own, scoped to the caller's teams like the rest of tunelab; errors come in
OpenAI's shape (`errors.py`). The browser's playground uses the chat route with its session.
"""

from fastapi import APIRouter

from . import chat, files, fine_tuning, model_list

router = APIRouter(prefix="/v1", tags=["openai-compatible"])
for _module in (files, fine_tuning, model_list, chat):
    router.include_router(_module.router)
