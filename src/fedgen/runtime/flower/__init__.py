"""Flower runtime: the same client logic and server loop, with messages carried by Flower 1.42.

* :mod:`.runtime` -- :class:`FlowerRuntime`, the server loop's ``runtime.fit`` over a Flower ``Grid``
* :mod:`.records` -- our states and metrics as Flower records, and back (bit-exact)
* :mod:`.secagg` -- SecAgg+ over the adapter update (Flower's workflow and mod)
* :mod:`.pki` -- TLS certificates and SuperNode keys for a deployment (and the tests)

The ServerApp and ClientApp that build an experiment around this runtime, and the launcher of
``fedgen run --runtime flower-sim|flower-deploy``, are entry points: :mod:`fedgen.deploy`.

Importing this package does not import ``flwr``; its submodules do.
"""
