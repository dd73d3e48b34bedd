"""The ServerApp: our experiment and server loop, with each round's clients reached through Flower.

It runs :func:`fedgen.experiment.run.run_experiment` unchanged (client sampling, update validation,
FedAvg, byte accounting, evaluation, checkpoints and the run directory, written on this
machine) with a :class:`~fedgen.runtime.flower.runtime.FlowerRuntime` as the runtime.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgen.deploy.run_config import run_settings
from fedgen.experiment.run import run_experiment
from fedgen.runtime.flower.runtime import FlowerRuntime


def make_server_app(default_run_config: dict | None = None) -> ServerApp:
    """A ServerApp; ``default_run_config`` stands in for a missing ``context.run_config`` (simulation)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = run_settings(context.run_config, default_run_config)
        cfg = s.config()

        def make_runtime(exp, logic) -> FlowerRuntime:
            return FlowerRuntime(
                grid,
                cfg.data.num_clients,
                round_timeout=s.round_timeout,
                wait_nodes=s.wait_nodes,
                mirror_kept=logic.kept,
                secagg=cfg.flower.secagg,
                context=context,
                # SecAgg+ weights: n_k / max_weight, <= 1 (DP: uniform, 1 each)
                max_weight=1.0 if cfg.dp.mode != "off" else max(len(d.train) for d in exp.data.values()),
                kept_reference=getattr(logic, "init", None),  # FedPer's personal layers; Ditto: global
            )

        run_experiment(
            cfg,
            s.run_dir,
            resume=s.resume,
            stop_after=s.stop_after or None,
            progress=False,
            make_runtime=make_runtime,
            run_id=s.run_id or None,
        )

    return app


app = make_server_app()
