"""`python-annotations`: manifests must carry the annotations the settings name.

Settings:
    {"required": ["org.opencontainers.image.source"]}

On a manifest push, every key in `required` must be among the manifest's
annotations with a non-empty value; otherwise the push is denied with a message
naming the missing keys. Every other request is allowed.

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

import annotations_policy

# The parsed settings, set once by `init`; instances are reused across
# requests, so parsing happens there and not in `evaluate`.
_required = None


class WitWorld(wit_world.WitWorld):
    def validate_settings(self, settings: str) -> None:
        try:
            annotations_policy.parse_settings(settings)
        except ValueError as e:
            raise Err(str(e))

    def init(self, settings: str) -> None:
        global _required
        try:
            _required = annotations_policy.parse_settings(settings)
        except ValueError as e:
            raise Err(str(e))

    def evaluate(self, request: Request) -> Decision:
        if _required is None:
            return Decision_Deny("python-annotations was not initialised")
        is_manifest_push = (
            request.action == Action.PUSH and request.resource == ResourceKind.MANIFEST
        )
        annotations = request.manifest.annotations if request.manifest is not None else None
        reason = annotations_policy.decide(
            _required, is_manifest_push, request.repository, annotations
        )
        if reason is None:
            return Decision_Allow()
        return Decision_Deny(reason)
