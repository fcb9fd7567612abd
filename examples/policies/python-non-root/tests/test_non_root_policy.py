"""Unit tests of the policy logic with plain CPython:

    python3 -m unittest discover -s tests

The built component itself is tested by ../build-all.sh through
`portcullis policy test`.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from non_root_policy import decide, parse_settings, runs_as_root  # noqa: E402


class Settings(unittest.TestCase):
    def test_valid(self):
        self.assertEqual(parse_settings("{}"), ())
        self.assertEqual(parse_settings('{"allow_repositories": []}'), ())
        self.assertEqual(
            parse_settings('{"allow_repositories": ["base/*", "tools/debug"]}'),
            ("base/*", "tools/debug"),
        )

    def test_refused(self):
        for text, needle in [
            ('{"allow_repositories": "base/*"}', "expected a list"),
            ('{"allow_repositories": [""]}', "settings.allow_repositories[0]"),
            ('{"allow_repositories": [1]}', "settings.allow_repositories[0]"),
            ('{"allow": ["a"]}', "unknown key `allow`"),
            ("[]", "expected a JSON object"),
            ("{", "not valid JSON"),
        ]:
            with self.subTest(text=text):
                with self.assertRaises(ValueError) as cm:
                    parse_settings(text)
                self.assertIn(needle, str(cm.exception))


class RunsAsRoot(unittest.TestCase):
    def test_root(self):
        for user in ["", " ", "root", "0", "00", "0:0", "root:root", "root:wheel", "0:1000", "0:"]:
            with self.subTest(user=user):
                self.assertTrue(runs_as_root(user))

    def test_not_root(self):
        for user in ["app", "1000", "1000:1000", "65532:65532", "nobody:nogroup", "1000:0", "rootless", "10"]:
            with self.subTest(user=user):
                self.assertFalse(runs_as_root(user))


class Decide(unittest.TestCase):
    def test_non_root_is_allowed(self):
        self.assertIsNone(decide((), True, "team-a/api", "65532:65532"))
        self.assertIsNone(decide((), False, "team-a/api", "app"))

    def test_root_push_is_denied(self):
        self.assertEqual(
            decide((), True, "team-a/api", ""),
            "image pushed to team-a/api runs as root (no `USER`): "
            "build it with a non-root user, e.g. `USER 65532:65532`",
        )

    def test_root_pull_is_denied_naming_the_user(self):
        self.assertEqual(
            decide((), False, "team-a/api", "0:0"),
            "image pulled from team-a/api runs as root (`USER 0:0`): "
            "build it with a non-root user, e.g. `USER 65532:65532`",
        )

    def test_exempt_repositories(self):
        exempt = ("base/*", "tools/debug")
        self.assertIsNone(decide(exempt, True, "base/alpine", "root"))
        self.assertIsNone(decide(exempt, True, "base/x/y", "root"))  # `*` matches `/` too
        self.assertIsNone(decide(exempt, True, "tools/debug", ""))
        self.assertIsNotNone(decide(exempt, True, "tools/debugger", ""))
        self.assertIsNotNone(decide(exempt, True, "team-a/base", "root"))

    def test_no_readable_config_is_allowed(self):
        self.assertIsNone(decide((), True, "team-a/api", None))
        self.assertIsNone(decide((), False, "team-a/api", None))


if __name__ == "__main__":
    unittest.main()
