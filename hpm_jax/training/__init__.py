"""The pieces of `hpm_jax.training.train`, one concept per module.

    from hpm_jax.training import objectives, steps, train_state
    objective = objectives.Objective.from_config(config)        # PGD-AT / TRADES, FC / HPM
    optimizer = train_state.make_optimizer(config.train)  # SGD, cosine / piecewise
    step_fn = jax.jit(functools.partial(steps.train_step, model, optimizer, objective, 0.0),
                      donate_argnums=0)

`train_checkpoints` (Orbax, resumable), `metrics` (TensorBoard + metrics.jsonl) and `model_init`
(from scratch or a converted checkpoint, FC -> HPM) complete the program.
"""
