"""`python-non-root`: refuse images whose config runs as root.

Settings (all optional):
    {"allow_repositories": ["base-images/*"]}

On a manifest push or pull of an image whose config the registry could read
(`request.manifest.image.config`), the config's `User` must name a non-root
user: an empty user, `root`, `0`, or uid 0 with any group (`0:0`,
`root:wheel`) is denied. Repositories matching an `allow_repositories` pattern
(fnmatch: `*`, `?`, `[...]`; `*` also matches `/`) are exempt. Everything
else, including indexes, artifacts and images whose config is not readable,
is allowed.

componentize-py generates the `wit_world` bindings from wit/policy.wit at build
time and looks for a class named `WitWorld` in this module: an instance of it
serves the world's exports (`validate-settings` -> `validate_settings`, ...).
A `result<_, string>` export returns None for ok and raises `Err(message)` for
err.
"""

import wit_world
from wit_world.imports.types import (
    Action,
    Decision,
    Decision_Allow,
    Decision_Deny,
    Request,
    ResourceKind,
)
from componentize_py_types import Err

import non_root_policy

# The parsed settings, set once by `init`; instances are reused across
# requests, so parsing happens there and not in `evaluate`.
_exempt = None


class WitWorld(wit_world.WitWorld):
    def validate_settings(self, settings: str) -> None:
        try:
            non_root_policy.parse_settings(settings)
        except ValueError as e:
            raise Err(str(e))

    def init(self, settings: str) -> None:
        global _exempt
        try:
            _exempt = non_root_policy.parse_settings(settings)
        except ValueError as e:
            raise Err(str(e))

    def evaluate(self, request: Request) -> Decision:
        if _exempt is None:
            return Decision_Deny("python-non-root was not initialised")
        if request.resource != ResourceKind.MANIFEST or request.action not in (
            Action.PUSH,
            Action.PULL,
        ):
            return Decision_Allow()
        manifest = request.manifest
        image = manifest.image if manifest is not None else None
        config = image.config if image is not None else None
        user = config.user if config is not None else None
        reason = non_root_policy.decide(
            _exempt, request.action == Action.PUSH, request.repository, user
        )
        if reason is None:
            return Decision_Allow()
        return Decision_Deny(reason)
