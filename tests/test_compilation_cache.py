"""JAX's persistent compilation cache in the programs: a second evaluation in a fresh process
loads every program from the cache and compiles none again.

A tiny evaluation (an 8x8 small CNN, 8 points, APGD-CE and Square for 2 iterations each, the
sanity checks off to save time) runs twice as `hpm-evaluate` in fresh subprocesses that
share a cache directory: the first finds it through JAX_COMPILATION_CACHE_DIR, the second
through --compilation_cache_dir. The second runs in a fresh workdir, so it runs every program
of the evaluation (a resumed one runs a subset of them). JAX's monitoring events count the
compile requests that went through the cache and those it served: in the second run every
request is a hit, and the cache directory gains no file.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from platform_support import cpu_xla_flags

from hpm_jax.models import get_model
from hpm_jax.models.export import save_model
from hpm_jax.runtime import integrity

pytestmark = pytest.mark.slow  # two evaluations in fresh processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = dict(in_channels=1, image_size=8, channels=[4, 4, 4], num_features=8)
# The program with a listener on JAX's compilation-cache events; their counts go to argv[1].
RUN = """
import collections, json, sys
import jax.monitoring
counts = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kw: counts.update([event]))
out, sys.argv = sys.argv[1], ["hpm-evaluate", *sys.argv[2:]]
from hpm_jax.cli import evaluate
try:
    evaluate.console_main()
finally:
    json.dump({k.rsplit("/", 1)[-1]: v for k, v in counts.items() if "compilation_cache" in k},
              open(out, "w"))
"""


def _files(directory) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), directory)
            for d, _, names in os.walk(directory) for f in names}  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_inputs")
    model = get_model("small_cnn", num_classes=10, head="fc", **ARCH)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), x[:1])
    model_dir = save_model(str(root / "model"), variables, arch="small_cnn", num_classes=10,
                           head="fc", **ARCH)  # fmt: skip
    np.savez(root / "data.npz", x=x, y=rng.integers(0, 10, 8).astype(np.int32))
    return root, model_dir


def _evaluate(inputs, workdir, cache, *, via_flag: bool):
    root, model_dir = inputs
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_ENABLE_COMPILATION_CACHE": "true",
           "XLA_FLAGS": cpu_xla_flags(1)}  # fmt: skip
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    flags = [f"--compilation_cache_dir={cache}"] if via_flag else []
    if not via_flag:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    counts = root / f"{workdir.name}_events.json"
    run = subprocess.run(
        [sys.executable, "-c", RUN, str(counts), "--config=configs/fashion_mnist.py",
         f"--checkpoint={model_dir}", f"--workdir={workdir}", *flags,
         f"--config.evaluation.data_file={root / 'data.npz'}",
         "--config.evaluation.num_examples=8", "--config.evaluation.batch_size=8",
         "--config.evaluation.version=apgd-ce,square", "--config.evaluation.run_checks=False",
         "--config.evaluation.attack_options.apgd-ce.n_iter=2",
         "--config.evaluation.attack_options.square.n_queries=2"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(counts.read_text())


def test_a_second_evaluation_compiles_nothing_again(inputs, tmp_path):
    cache = tmp_path / "cache"
    first = _evaluate(inputs, tmp_path / "first", cache, via_flag=False)
    written = _files(cache)
    # Every compile request was written to the cache (none too quick or small to be kept) or,
    # a program compiled a second time in the same process, served from it.
    requests = first["compile_requests_use_cache"]
    assert (
        first["cache_misses"] >= 5
        and first["cache_misses"] + first.get("cache_hits", 0) == requests
    ), first
    assert len(written) >= first["cache_misses"], (len(written), first)
    second = _evaluate(inputs, tmp_path / "second", cache, via_flag=True)
    assert second["compile_requests_use_cache"] == first["compile_requests_use_cache"], second
    assert second["cache_hits"] == second["compile_requests_use_cache"], second
    assert _files(cache) == written
    report = integrity.read_json(tmp_path / "second" / "report.json")
    assert report["precision"]["level"] == "high"
    assert report["provenance"]["matmul_precision"] == "high"
