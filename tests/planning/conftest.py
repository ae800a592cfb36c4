import pytest

from app.planning.analytic import write_analytic_store
from store import db, repo


@pytest.fixture(scope="session")
def analytic(tmp_path_factory):
    """(measurements, models, devices) of the analytic H100 stand-in dataset."""
    url = f"sqlite:///{tmp_path_factory.mktemp('analytic') / 'store.db'}"
    with db.session(url) as s:
        write_analytic_store(s)
        out = repo.read_measurements(s), repo.read_models(s), repo.read_devices(s)
    db.dispose_all()
    return out
