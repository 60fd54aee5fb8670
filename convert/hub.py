"""Download checkpoint files from the Hugging Face hub (honours HF_HOME, HF_HUB_OFFLINE and
revision pinning) with errors that say how to pass a local file instead."""

from pathlib import Path


def fetch(repo: str, filename: str, revision: str | None = None, *,
          local_hint: str = "") -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError)

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except LocalEntryNotFoundError:
        # a subclass of EntryNotFoundError: the file is not cached and the hub is not reachable
        raise ValueError(f"could not get {filename} from {repo}: offline mode is on "
                         f"(HF_HUB_OFFLINE) or the hub could not be reached, and it is not "
                         f"cached; {local_hint or 'download it yourself and pass the local path'}"
                         ) from None
    except EntryNotFoundError:
        raise ValueError(f"the hub repo {repo} has no file {filename}"
                         f"{f' at revision {revision}' if revision else ''}; check the name, or "
                         f"{local_hint or 'pass a local file instead'}") from None
    except RepositoryNotFoundError:
        raise ValueError(f"the hub repo {repo} does not exist or needs a login (huggingface-cli "
                         f"login); or {local_hint or 'pass a local file instead'}") from None
    except (HfHubHTTPError, OSError):
        raise ValueError(f"could not get {filename} from {repo}: the hub could not be reached; "
                         f"{local_hint or 'download it yourself and pass the local path'}") from None
