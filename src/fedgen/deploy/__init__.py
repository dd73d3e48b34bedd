"""Flower entry points that build an experiment around :mod:`fedgen.runtime.flower`: the ServerApp,
the ClientApp, the launcher of ``fedgen run --runtime flower-sim | flower-deploy`` and the
deployment guide."""
