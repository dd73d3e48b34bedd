"""Flower runtime: the same client logic and server loop, with messages carried by Flower 1.42.

* :mod:`.runtime` -- :class:`FlowerRuntime`, the server loop's ``runtime.fit`` over a Flower ``Grid``
* :mod:`.server_app` -- the ServerApp: builds the experiment and runs :func:`fedgen.run.run_experiment`
  with a :class:`FlowerRuntime` (sampling, validation, FedAvg, accounting are the in-process ones)
* :mod:`.client_app` -- the ClientApp: partition discovery (``query``) and ``train``, which calls the
  algorithm's ``ClientLogic.fit`` with the in-process runtime's seed
* :mod:`.launch` -- ``fedgen run --runtime flower-sim|flower-deploy``: app directory, ``flwr run``,
  ``run_simulation``
* :mod:`.pki` -- TLS certificates and SuperNode keys for a deployment (and the tests)

Importing this package does not import ``flwr``; its submodules do.
"""
