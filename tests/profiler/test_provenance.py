"""Provenance of a run: the git revision inside and outside a checkout."""

from profiler.provenance import git_revision


def test_outside_a_checkout_the_revision_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SSMPLAN_GIT_REVISION", raising=False)
    assert git_revision(tmp_path) is None
    monkeypatch.setenv("SSMPLAN_GIT_REVISION", "abc1234")
    assert git_revision(tmp_path) == "abc1234"


def test_inside_the_checkout_the_revision_is_heads(monkeypatch):
    monkeypatch.delenv("SSMPLAN_GIT_REVISION", raising=False)
    rev = git_revision()
    assert rev is not None and len(rev.split("+")[0]) == 40


def test_a_given_revision_wins_over_a_stale_copy_of_git(monkeypatch):
    """A tree copied with an older .git reads as that HEAD + '+dirty'; the revision sent with it wins."""
    monkeypatch.setenv("SSMPLAN_GIT_REVISION", "abc1234")
    assert git_revision() == "abc1234"


def test_a_checkout_git_cannot_read_gives_the_environment_or_none(tmp_path, monkeypatch):
    """A copied tree whose .git is unreadable (another owner, no objects): git fails, so without the
    variable the revision is unknown (None), never a guess; with it, the given revision."""
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("SSMPLAN_GIT_REVISION", raising=False)
    assert git_revision(tmp_path) is None
    monkeypatch.setenv("SSMPLAN_GIT_REVISION", "abc1234")
    assert git_revision(tmp_path) == "abc1234"
