"""Pushing an export folder to a Hugging Face Hub repository (`huggingface_hub.HfApi`).

    url = push_folder(folder, "org/my-model-gguf", token=token, endpoint=None)

Refused, with a HubError that says why and never carries the token, when the machine is
offline (HF_HUB_OFFLINE), the Hub cannot be reached, or it answers with an error.
"""

from __future__ import annotations

from pathlib import Path

from .errors import TrainingError


class HubError(TrainingError):
    """The push did not happen; the message says why (without the token)."""


def _scrubbed(message: str, token: str) -> str:
    return message.replace(token, "***") if token else message


def push_folder(
    folder: Path, repo_id: str, *, token: str, endpoint: str | None = None, commit_message: str = "Upload from tunelab"
) -> str:
    """Create `repo_id` (a private model repository) if needed and upload `folder` into it;
    returns the repository's address."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise HubError("the machine is offline (HF_HUB_OFFLINE is set): nothing was pushed")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo = api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message)
    except Exception as error:
        # Network (whichever HTTP library the hub client uses), auth, quota, a name the Hub
        # rejects: all end the same way, with the reason and without the token.
        reason = _scrubbed(f"{type(error).__name__}: {error}", token).splitlines()[0][:300]
        raise HubError(f"the Hugging Face Hub refused the push or could not be reached ({reason})") from error
    return str(repo)
