"""The model repository: `<repo>/<model>/<version>/` folders, each described by a manifest."""

from lens_server.repository.manifest import ImageSpec, Manifest, TextSpec
from lens_server.repository.store import Deployed, Repository

__all__ = ["Deployed", "ImageSpec", "Manifest", "Repository", "TextSpec"]
