"""Download checkpoint files from the Hugging Face hub (honours HF_HOME, HF_HUB_OFFLINE and
revision pinning) with errors that say how to pass a local file instead.

huggingface_hub retries an unreachable hub for about 24 s before giving up on a file it has not
cached; a file that is not cached is therefore first probed once, without retries, so that no
network fails at once."""

import re
from pathlib import Path
from typing import Callable

from mlx_imgen.registry import CARDS, Source

# a hub repo id: owner/name, as the hub spells them
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class MissingHubFile(ValueError):
    """The hub repo exists but holds no file of that name."""


class HubUnreachable(ValueError):
    """The hub cannot be reached (or offline mode is on) and a needed file is not cached."""


def _offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return check() if check else constants.HF_HUB_OFFLINE


def _cached(repo: str, filename: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename, revision=revision), str)


def _source_cached(source: Source) -> bool:
    weights = any(_cached(source.repo, name, source.revision)
                  for name in (source.filename, source.fallback) if name)
    return weights and (source.config is None or _cached(source.repo, source.config,
                                                        source.revision))


def _unreachable(what: str, hint: str) -> HubUnreachable:
    return HubUnreachable(f"could not get {what}: the hub could not be reached or offline mode "
                          f"is on (HF_HUB_OFFLINE), and it is not cached; "
                          f"{hint or 'download it yourself and pass the local path'}")


def _check_reachable(repo: str, filename: str, revision: str | None, hint: str) -> None:
    """Raise HubUnreachable unless the hub answers one request for `filename`, no retries."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    what = f"{filename} from {repo}"
    if _offline():
        raise _unreachable(what, hint)
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision),
                             timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return  # the hub answered (a missing file or a login is reported by the download)
    except Exception:  # noqa: BLE001 - whatever the HTTP client raises, nothing answered
        raise _unreachable(what, hint) from None


def require(sources: list[Source | None], hint: str) -> None:
    """Fail at once, with `hint`, when some of these hub sources are not cached and the hub
    cannot be reached: before any file is fetched or read."""
    for source in sources:
        if source is not None and source.repo and not _source_cached(source):
            _check_reachable(source.repo, source.filename, source.revision, hint)
            return


def fetch(repo: str, filename: str, revision: str | None = None, *,
          local_hint: str = "") -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError)

    if not _cached(repo, filename, revision):
        _check_reachable(repo, filename, revision, local_hint)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except LocalEntryNotFoundError:
        # a subclass of EntryNotFoundError: the file is not cached and the hub is not reachable
        raise _unreachable(f"{filename} from {repo}", local_hint) from None
    except EntryNotFoundError:
        raise MissingHubFile(f"the hub repo {repo} has no file {filename}"
                         f"{f' at revision {revision}' if revision else ''}; check the name, or "
                         f"{local_hint or 'pass a local file instead'}") from None
    except RepositoryNotFoundError:
        raise ValueError(f"the hub repo {repo} does not exist or needs a login (huggingface-cli "
                         f"login); or {local_hint or 'pass a local file instead'}") from None
    except (HfHubHTTPError, OSError):
        raise ValueError(f"could not get {filename} from {repo}: the hub could not be reached; "
                         f"{local_hint or 'download it yourself and pass the local path'}") from None


def fetch_optional(repo: str, filename: str, revision: str | None, hint: str):
    """`fetch`, or None where the repo lacks the file (or, offline, it is not cached: the repo
    may well lack it); other failures raise as `fetch` does."""
    try:
        return fetch(repo, filename, revision, local_hint=hint)
    except (HubUnreachable, MissingHubFile):
        return None


def local_folder(repo: str) -> str:
    """Where a message suggests downloading a hub repo: ./owner-name."""
    return f"./{repo.replace('/', '-')}"


def is_family_source(source: str, family: str, is_folder: Callable[[Path], bool]) -> bool:
    """An alias of `family`, a local folder `is_folder` recognises, or a hub repo id whose
    name says the family (a converter's routing test)."""
    card = CARDS.get(source)
    if card is not None:
        return card.family == family
    path = Path(source)
    if path.exists():
        return is_folder(path)
    return bool(HUB_ID.fullmatch(source)) and family in source.lower()


def download_hint(repo: str, files: str, out) -> str:
    """How to convert `repo` by hand where the hub cannot be reached: download `files` (what
    the converter reads, in words) into ./owner-name, then convert that folder."""
    from huggingface_hub import constants

    folder = local_folder(repo)
    return (f"download {files} from {constants.ENDPOINT}/{repo} into a folder {folder}, then "
            f"run `mlx-imgen convert {folder} --out {out or 'DIR'}`")
