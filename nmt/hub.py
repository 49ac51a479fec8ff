"""Models on the Hugging Face Hub: `org/name` or `org/name@revision`, fetched as `transformers`
does, with `huggingface_hub.snapshot_download` into the hub client's own cache (HF_HOME,
HF_HUB_CACHE; `HF_HUB_OFFLINE=1` uses the cache only). Publishing needs no code of ours:
`hf upload org/name DIR`."""

from __future__ import annotations

import re
from pathlib import Path

from nmt.checkpoint import CheckpointError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    """`org/name[@revision]` that is no local path (nor a checkpoint file's name)."""
    return bool(REPO_ID.match(name)) and not name.endswith(".pt") and not Path(name).expanduser().exists()


def hub_snapshot(name: str) -> Path:
    """The local snapshot of a Hub model (downloaded unless the cache holds it); one-line
    CheckpointErrors for no network, no such repository or revision, and an offline cache miss,
    saying that no such local path exists either."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = name.partition("@")
    here = f"{name} does not exist here; as a Hub model"
    try:
        return Path(snapshot_download(repo_id, revision=revision or None))
    except RevisionNotFoundError:
        raise CheckpointError(f"{here}, the repository {repo_id} has no revision {revision!r}") from None
    except GatedRepoError:
        raise CheckpointError(f"{here}, it is gated: log in (`hf auth login`) with access to it") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{here}, there is no such repository (or it is private: `hf auth login`)") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{here}, it is not in the Hub cache and the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1)"
        ) from None
    except OSError as error:
        raise CheckpointError(f"{here}, the Hub cannot be reached: {error}") from None
