"""The evaluation: a checkpoint's FC and l2-EMA heads under AutoAttack, its HPM head under
MSA, resumable in a workdir, with a report.

    from hpm_jax.evaluation import evaluate
    report = evaluate.run(config, "/tmp/fmnist_hpm/model", "/tmp/ev")  # hpm_jax.cli.evaluate

Modules: `evaluate` (`run`, the rows and the report), `inputs` (the model directory and the
images), `runner` (each attack a resumable section of the workdir), `workdir` (what a
workdir holds; its identity), `log` (log.txt, progress, TensorBoard), `reports` (summary.md
and plots), `provenance` (the software and data an evaluation ran on), `robustbench`
(RobustBench's subset, order and reference numbers for leaderboard models).
"""
