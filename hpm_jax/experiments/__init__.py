"""Experiments built from training and evaluation: the demo's four stages and the HPM
design-space study.

    from hpm_jax.experiments import demo, study
    summary = demo.run(*demo.stage_configs("configs/fashion_mnist.py"), "/tmp/hpm_demo")
    table = study.run(study_config, "/tmp/study")                      # hpm_jax.cli.study

Modules: `demo`, `study`, `study_report` (the study's intervals, table and plot).
"""
