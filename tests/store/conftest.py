import pytest

from store import db


@pytest.fixture
def store_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    yield url
    db.dispose_all()
