import pytest

from wsloc.data.synthetic import generate


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic set in the NIH layout (read-only for the tests that share it)."""
    return generate(tmp_path_factory.mktemp("synth") / "set", n=80, size=96, seed=3,
                    workers=1, progress=False)
