"""What every step of one build shares."""

from __future__ import annotations

from typing import NamedTuple

from pib.build.env import BuildEnv
from pib.config.types import Config
from pib.host import FloorCheck


class BuildContext(NamedTuple):
    """The workspace's configuration, the environment builds run in, and the host they run on."""

    cfg: Config
    benv: BuildEnv
    floor: FloorCheck
