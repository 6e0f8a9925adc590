import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    seed = torch.seed() % (2**31)  # fresh random inputs each run
    torch.manual_seed(seed)
    print(f"torch seed {seed} (replay: torch.manual_seed({seed}) at the start of the test)")  # shown on failure
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
