"""The experiment layer: registry (names -> tasks, algorithms), build (one experiment's parts),
loop (federated, local, central training and personalization), run (config -> run directory),
rundir (files, checkpoints, resume) and summary (headline figures)."""
