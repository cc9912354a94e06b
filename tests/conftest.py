"""Shared fixtures."""
import os
import tempfile

import pytest
import torch

# Base LLMs (`llm: pretrained:llava-text-tiny`, the tiny recipes') go to a cache of this test session, trained
# for a few steps on a small text build: the tests check that they are built and used, not what they learn.
_CACHE = tempfile.TemporaryDirectory(prefix="vlm-test-cache-")
os.environ["VLM_CACHE"] = _CACHE.name
os.environ["VLM_BASE_LLM_OVERRIDES"] = ("stages.0.steps=4 stages.0.batch_size=4 data.world.build.samples=100 "
                                        "data.world.build.splits=[train] runtime.num_workers=0 "
                                        "runtime.checkpoint_every=0")


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
