"""inference.Generators: how often its generator chains are traced, and what a task log sees."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cyclegan_jobs import images
from cyclegan_jobs.config import preset
from cyclegan_jobs.evaluation.evaluate import BATCH
from cyclegan_jobs.inference import GENERATORS, Generators
from cyclegan_jobs.training.networks import build_generator

SIZE = 32


@pytest.fixture(scope="module")
def nets() -> tuple:
    cfg = preset("tiny", SIZE)[0]
    return cfg, {name: build_generator(cfg, name=name) for name in GENERATORS}


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_a_chain_is_traced_once_for_all_its_batch_sizes(nets: tuple) -> None:
    cfg, networks = nets
    gens = Generators(networks, cfg, precision="float32")
    a, b = _images(71, 0), _images(77, 1)
    assert len(a) % BATCH and len(b) % BATCH  # each ends in a smaller batch, as evaluate's do
    out = gens.apply("generator_AB", a, BATCH)
    gens.apply("generator_BA", b, BATCH)
    gens.apply("generator_BA", a[:5], BATCH)
    # One trace per generator, not one for the full batches and one for the remainder.
    assert gens._run.experimental_get_tracing_count() == 2
    expected = networks["generator_AB"](images.to_unit(a), training=False)
    np.testing.assert_allclose(out, np.asarray(expected), atol=1e-5)


def test_selection_then_evaluation_in_one_process_log_no_retracing_warning(
    nets: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    # make run's local runner trains (model selection builds a Generators) and evaluates (a
    # second one) in one process; TF warns when 5 of 10 calls of one method traced.
    cfg, networks = nets
    a, b = _images(71, 2), _images(77, 3)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for _ in range(3):
            gens = Generators(networks, cfg, precision="float32")
            fake_b = gens.apply("generator_AB", a, BATCH)
            gens.apply("generator_BA", b, BATCH)
            gens.apply("generator_BA", images.to_uint8(fake_b), BATCH)
    retracing = [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
    assert not retracing, retracing
