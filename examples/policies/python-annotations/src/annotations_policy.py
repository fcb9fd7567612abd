"""The decision logic of `python-annotations`, free of any WIT bindings.

It works on plain values so that it can be unit-tested with CPython
(`python3 -m unittest discover -s tests`) without building the component;
`app.py` adapts the component's WIT types to it.
"""

import json

SETTINGS_KEYS = ("required",)


def parse_settings(text):
    """Parses and checks the settings JSON.

    Returns the tuple of required annotation keys, or raises ValueError with a
    message for the operator.
    """
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"settings: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError("settings: expected a JSON object")
    for key in raw:
        if key not in SETTINGS_KEYS:
            raise ValueError(f"settings: unknown key `{key}` (expected `required`)")
    if "required" not in raw:
        raise ValueError("settings.required: missing (a list of annotation keys)")
    required = raw["required"]
    if not isinstance(required, list) or not required:
        raise ValueError("settings.required: expected a non-empty list of annotation keys")
    for i, key in enumerate(required):
        if not isinstance(key, str) or not key:
            raise ValueError(f"settings.required[{i}]: expected a non-empty string")
    return tuple(required)


def decide(required, is_manifest_push, repository, annotations):
    """Decides one request.

    `annotations` is the pushed manifest's list of (key, value) pairs, or None
    when the request carries no manifest. Returns None to allow, or the reason
    for a denial. An annotation with an empty value counts as missing.
    """
    if not is_manifest_push or annotations is None:
        return None
    present = {key for key, value in annotations if value}
    missing = [key for key in required if key not in present]
    if not missing:
        return None
    names = ", ".join(f"`{key}`" for key in missing)
    plural = "annotation" if len(missing) == 1 else "annotations"
    return f"manifest pushed to {repository} is missing the required {plural} {names}"
