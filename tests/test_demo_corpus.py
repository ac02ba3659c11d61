"""The demo's and walkthrough's corpus depends on the Python and dependency versions only, not on
what else is installed, so its documented tables reproduce."""

import os
import re

from megatron_mile.data import corpus as corpus_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LONG_TEXT = ("This distribution was installed after the first build. Its description and license must not "
             "reach the corpus, or the demo's numbers would depend on what else happens to be installed. ") * 4


def _fake_distribution(site):
    """An installed distribution (dist-info with a long description, a license and code)."""
    info = site / "unrelated_extra-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: unrelated-extra\nVersion: 1.0\n\n{LONG_TEXT}\n")
    (site / "unrelated_extra").mkdir()
    (site / "unrelated_extra" / "__init__.py").write_text(f'"""{LONG_TEXT}"""\n')
    (site / "unrelated_extra" / "LICENSE").write_text(LONG_TEXT)
    (info / "RECORD").write_text("unrelated_extra/__init__.py,,\nunrelated_extra/LICENSE,,\n"
                                 "unrelated_extra-1.0.dist-info/METADATA,,\n")


def test_two_builds_give_the_same_bytes_whatever_else_is_installed(tmp_path, monkeypatch):
    first = tmp_path / "first.jsonl"
    stats = corpus_mod.write_text_corpus(str(first), min_bytes=300_000, seed=4)
    site = tmp_path / "site"
    _fake_distribution(site)
    import importlib.metadata

    monkeypatch.syspath_prepend(str(site))
    assert importlib.metadata.version("unrelated-extra") == "1.0"  # visible to a collector that looks
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    second = tmp_path / "second.jsonl"
    corpus_mod.write_text_corpus(str(second), min_bytes=300_000, seed=4)
    assert first.read_bytes() == second.read_bytes()
    assert b"installed after the first build" not in second.read_bytes()
    assert stats.versions == corpus_mod.source_versions() and stats.versions["python"]
    assert set(stats.versions) - {"python"} <= set(corpus_mod.REQUIRED_DISTRIBUTIONS)


def test_required_distributions_are_setups_install_requires():
    with open(os.path.join(ROOT, "setup.py")) as f:
        setup = f.read()
    block = setup[setup.index("install_requires=["):]
    block = block[:block.index("]")]
    names = {re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower() for req in re.findall(r'"([^"]+)"', block)}
    assert names == set(corpus_mod.REQUIRED_DISTRIBUTIONS)
