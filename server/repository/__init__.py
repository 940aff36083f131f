"""The model repository: `<repo>/<model>/<version>/` folders, each described by a manifest."""

from server.repository.manifest import ImageSpec, Manifest, TextSpec
from server.repository.store import Repository

__all__ = ["ImageSpec", "Manifest", "Repository", "TextSpec"]
