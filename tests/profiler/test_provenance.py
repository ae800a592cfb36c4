"""Provenance of a run: the git revision inside and outside a checkout."""

from profiler.provenance import git_revision


def test_outside_a_checkout_the_revision_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SSMPLAN_GIT_REVISION", raising=False)
    assert git_revision(tmp_path) is None
    monkeypatch.setenv("SSMPLAN_GIT_REVISION", "abc1234")
    assert git_revision(tmp_path) == "abc1234"


def test_inside_the_checkout_the_revision_is_heads():
    rev = git_revision()
    assert rev is not None and len(rev.split("+")[0]) == 40
