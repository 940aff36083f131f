"""Other apps' APIs over the same core, each opt-in (`lens serve --compat`): a router module
per app, answering in that app's request and error shapes (`errors.shaped`), so the app
needs no change to use lens.

- `immich`: Immich's machine-learning service (`MACHINE_LEARNING_URL`), its CLIP task;
- `weaviate`: the inference container of Weaviate's `multi2vec-clip` (`CLIP_INFERENCE_API`).

docs/compat.md says what each supports and which source lines of the app it was matched
against.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter

from lens_server.http.compat import immich, weaviate


def routers(
    enabled: tuple[str, ...], aliases: Mapping[str, str], weaviate_model: str = ""
) -> list[APIRouter]:
    """The routers of the apps `enabled` names (others, such as kserve, are left to their
    own modules): Immich's with Immich's model names mapped through `aliases`, Weaviate's
    serving `weaviate_model` (NAME[:VERSION]; '': the default model)."""
    found = []
    if "immich" in enabled:
        found.append(immich.router(aliases))
    if "weaviate" in enabled:
        found.append(weaviate.router(weaviate_model))
    return found
