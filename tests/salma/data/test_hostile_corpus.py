"""Every kind of the hostile-data corpus (``hostile_corpus.py``) is handled cleanly: skipped and
counted as a bad record naming its file, or refused with an error naming the file or key."""

import pytest

from hostile_corpus import ALL_KINDS, attempt, prepare


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
def test_hostile_input_is_handled_cleanly(kind, synthetic_dir, tmp_path):
    root = prepare(synthetic_dir, tmp_path)
    outcome, what = attempt(kind, root)
    assert outcome == "clean", f"{kind.name} ({kind.category}): {outcome}: {what}"
