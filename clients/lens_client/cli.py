"""The `lens` command.

Client commands talk to a server (`--server HOST:PORT`, or LENS_SERVER); repository commands
work on a model repository (`--repo DIR`, or LENS_REPO). Errors are one line on stderr and a
non-zero exit code. The client's own commands live here; `lens serve` comes from the server
package and `lens train/export/import` from the training package, each through an entry point
of the group `lens.cli` (a function that registers its commands on the app), so this package
imports neither.
"""

import sys
from importlib.metadata import entry_points

from lens_client import (  # register the commands
    cli_classify,
    cli_deploy,
    cli_import,
    cli_index,
    cli_models,
)
from lens_client.cli_common import app

for _plugin in entry_points(group="lens.cli"):
    _plugin.load()(app)

__all__ = ["app", "cli_classify", "cli_deploy", "cli_import", "cli_index", "cli_models", "main"]


def main() -> None:
    """The console script. `lens train finetune ...` is `lens finetune ...`: fine-tuning sits
    with the training methods in users' minds, but `lens train` takes the method as an argument
    with the pretraining options, which fine-tuning does not share."""
    if sys.argv[1:3] == ["train", "finetune"]:
        del sys.argv[1]
    app()


if __name__ == "__main__":
    main()
