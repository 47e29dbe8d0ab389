"""The checked-in stubs under tokenwire/v1 must be exactly what proto/ generates."""
import filecmp
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_proto  # noqa: E402


def test_checked_in_stubs_match_the_protos(tmp_path):
    gen_proto.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "tokenwire" / "v1").iterdir() if p.is_file())
    checked_in = sorted(
        p.relative_to(ROOT) for p in (ROOT / "tokenwire" / "v1").iterdir() if p.is_file() and p.suffix in (".py", ".pyi")
    )
    assert fresh == checked_in, "run `make proto`: the set of generated files changed"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"run `make proto`: stale stubs {stale}"
