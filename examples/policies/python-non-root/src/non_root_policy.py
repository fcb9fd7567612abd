"""The decision logic of `python-non-root`, free of any WIT bindings.

It works on plain values so that it can be unit-tested with CPython
(`python3 -m unittest discover -s tests`) without building the component;
`app.py` adapts the component's WIT types to it.
"""

import fnmatch
import json

SETTINGS_KEYS = ("allow_repositories",)


def parse_settings(text):
    """Parses and checks the settings JSON.

    Returns the tuple of repository patterns exempted from the check (empty
    when `allow_repositories` is absent), or raises ValueError with a message
    for the operator.
    """
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"settings: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError("settings: expected a JSON object")
    for key in raw:
        if key not in SETTINGS_KEYS:
            raise ValueError(f"settings: unknown key `{key}` (expected `allow_repositories`)")
    patterns = raw.get("allow_repositories", [])
    if not isinstance(patterns, list):
        raise ValueError("settings.allow_repositories: expected a list of repository patterns")
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"settings.allow_repositories[{i}]: expected a non-empty string")
    return tuple(patterns)


def runs_as_root(user):
    """Whether an image config's `User` makes it run as root.

    An empty user means the runtime's default, root. Otherwise the user part
    (before any `:group`) is root when it is `root` or the uid 0 (`0`, `00`):
    `root`, `0`, `0:0`, `root:wheel`, `0:1000` all run as uid 0. A non-root
    uid with group 0 (`1000:0`) does not.
    """
    name = user.strip().split(":", 1)[0]
    if name == "":
        return True
    if name == "root":
        return True
    return name.isdigit() and int(name) == 0


def decide(exempt, is_push, repository, user):
    """Decides one manifest push or pull.

    `user` is the image config's `User`, or None when the request carries no
    readable image config (an index, an artifact, a config not fetched yet):
    those are allowed. `exempt` is the tuple of repository patterns from the
    settings. Returns None to allow, or the reason for a denial.
    """
    if user is None:
        return None
    if any(fnmatch.fnmatchcase(repository, pattern) for pattern in exempt):
        return None
    if not runs_as_root(user):
        return None
    what = "no `USER`" if user.strip() == "" else f"`USER {user}`"
    verb = "pushed to" if is_push else "pulled from"
    return (
        f"image {verb} {repository} runs as root ({what}): "
        "build it with a non-root user, e.g. `USER 65532:65532`"
    )
