"""The `lens` command.

Client commands talk to a server (`--server HOST:PORT`, or LENS_SERVER); repository commands
work on a model repository (`--repo DIR`, or LENS_REPO). Errors are one line on stderr and a
non-zero exit code.
"""

from lens_client import (  # register the commands
    cli_classify,
    cli_deploy,
    cli_index,
    cli_models,
    cli_train,
)
from lens_client.cli_common import app

__all__ = ["app", "cli_classify", "cli_deploy", "cli_index", "cli_models", "cli_train"]

if __name__ == "__main__":
    app()
