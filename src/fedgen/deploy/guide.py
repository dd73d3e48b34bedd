"""``fedgen deploy --help``: a Flower 1.42 deployment step by step (no ``flwr`` import here)."""

DEPLOY_GUIDE = """\
Run FedGen-Edge on a Flower 1.42 deployment: one SuperLink (server) and one SuperNode per
client, over TLS, with SuperNode authentication. Each SuperNode serves one client partition
(--node-config partition-id=K, K = 0 .. data.num_clients-1) and keeps its clients' states
(FedPer, Ditto) on its own disk. Every machine: pip install fedgen-edge (pins flwr==1.42.*),
the same data under $FEDGEN_DATA, and the same backbone (model.backbone, or the cached
runs/backbones/ that `fedgen pretrain` writes).

1. Certificates (or use your own CA; the certificate must name the SuperLink's host/IP):
     fedgen deploy certs --out certs --host superlink.example.org --host 10.0.0.5

2. SuperLink (Fleet, Control and Runtime APIs on one HTTPS port):
     flower-superlink --ssl-ca-certfile certs/ca.crt --ssl-certfile certs/server.pem \\
       --ssl-keyfile certs/server.key --enable-supernode-auth \\
       --disable-runtime-dependency-installation --host 0.0.0.0 --port 9093
   The ServerApp runs on this machine: it evaluates, checkpoints and writes the run directory here.

3. The flwr CLI's connection, in $FLWR_HOME/config.toml (default ~/.flwr/config.toml):
     [superlink]
     default = "fedgen"
     [superlink.fedgen]
     address = "superlink.example.org:9093"
     root-certificates = "/abs/path/certs/ca.crt"

4. One key pair per SuperNode (on the device), its public key registered by the operator:
     fedgen deploy node-key --out keys --name node3
     flwr supernode register keys/node3.pub fedgen
   Only registered keys may connect; `flwr supernode list fedgen` shows them.

5. Start SuperNode K (here K=3) on its device:
     flower-supernode --superlink superlink.example.org:9093 --root-certificates certs/ca.crt \\
       --auth-supernode-private-key keys/node3 \\
       --node-config "partition-id=3 store-dir='/var/lib/fedgen/store'"
   (add --port P when several SuperNodes share one machine: each needs its own local port).

6. Run (from any machine with the flwr CLI and the connection of step 3):
     fedgen run --config configs/demo.yaml --runtime flower-deploy --set flower.superlink=fedgen \\
       --out /srv/fedgen/runs/demo-flower
   This writes a Flower app (pyproject.toml naming fedgen's ServerApp/ClientApp, with the resolved
   config in its run config) and calls `flwr run APP fedgen --stream`. --out is a path on the
   SuperLink's machine. The server waits flower.wait_nodes seconds (default 120) for SuperNodes
   serving every partition and flower.round_timeout seconds (default 600) for each round.
   Resume an interrupted run with: fedgen run --resume RUN_DIR --runtime flower-deploy

On one machine instead: fedgen run --config ... --runtime flower-sim (Flower's Simulation Engine;
pip install 'fedgen-edge[flower-sim]'). Client sampling, update checks, FedAvg and byte
accounting are the in-process ones; the final adapter equals the in-process runtime's bit for bit
(tests/test_flower.py).
"""
