"""Unit tests of the policy logic with plain CPython:

    python3 -m unittest discover -s tests

The built component itself is tested by ../build-all.sh through
`portcullis policy test`.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from annotations_policy import decide, parse_settings  # noqa: E402

SOURCE = "org.opencontainers.image.source"
REVISION = "org.opencontainers.image.revision"


class Settings(unittest.TestCase):
    def test_valid(self):
        self.assertEqual(parse_settings('{"required": ["%s"]}' % SOURCE), (SOURCE,))

    def test_refused(self):
        for text, needle in [
            ("{}", "settings.required: missing"),
            ('{"required": []}', "non-empty list"),
            ('{"required": "x"}', "non-empty list"),
            ('{"required": [""]}', "settings.required[0]"),
            ('{"required": [1]}', "settings.required[0]"),
            ('{"required": ["a"], "extra": 1}', "unknown key `extra`"),
            ("[]", "expected a JSON object"),
            ("{", "not valid JSON"),
        ]:
            with self.subTest(text=text):
                with self.assertRaises(ValueError) as cm:
                    parse_settings(text)
                self.assertIn(needle, str(cm.exception))


class Decide(unittest.TestCase):
    def test_present_annotation_allows(self):
        self.assertIsNone(decide((SOURCE,), True, "team-a/api", [(SOURCE, "https://x")]))

    def test_missing_annotation_denies_naming_it(self):
        reason = decide((SOURCE, REVISION), True, "team-a/api", [(REVISION, "abc")])
        self.assertEqual(
            reason,
            "manifest pushed to team-a/api is missing the required annotation `%s`" % SOURCE,
        )

    def test_all_missing_are_named(self):
        reason = decide((SOURCE, REVISION), True, "team-a/api", [])
        self.assertIn("annotations `%s`, `%s`" % (SOURCE, REVISION), reason)

    def test_empty_value_counts_as_missing(self):
        self.assertIsNotNone(decide((SOURCE,), True, "team-a/api", [(SOURCE, "")]))

    def test_other_requests_are_allowed(self):
        self.assertIsNone(decide((SOURCE,), False, "team-a/api", []))
        self.assertIsNone(decide((SOURCE,), True, "team-a/api", None))


if __name__ == "__main__":
    unittest.main()
