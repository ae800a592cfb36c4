"""The app's own read of the measured points must be `store.repo.read_measurements`' frame, exactly."""

import pandas as pd
import seed_stores

from app.ui import frames
from store import repo
from store.db import session


def test_read_points_is_the_repos_frame(sqlite_url):
    seed_stores.seeded(sqlite_url)
    seed_stores.failed(sqlite_url)
    with session(sqlite_url) as s:
        ours, theirs = frames.read_points(s), repo.read_measurements(s)
        some = [int(r) for r in sorted(theirs["run_id"].unique())[-2:]]
        ours_some, theirs_some = frames.read_points(s, run_ids=some), repo.read_measurements(s, run_ids=some)
        ours_none, theirs_none = frames.read_points(s, run_ids=[]), repo.read_measurements(s, run_ids=[])
    assert len(theirs) > 50 and 0 < len(theirs_some) < len(theirs)
    pd.testing.assert_frame_equal(ours, theirs)
    pd.testing.assert_frame_equal(ours_some, theirs_some)
    assert ours_none.empty and list(ours_none.columns) == list(theirs_none.columns)
