"""Elastic training on a per-job Ray cluster (Ray Train V2).

Every slice of an elastic job runs ``python -m tessera.jobs.elastic``
(node.py): rank 0 starts the job's Ray head and the driver (driver.py), which
runs the user's ``train(config)`` under ``TorchTrainer`` with
``ScalingConfig(num_workers=(min, max))``; every other slice joins that head as
one Ray node offering one ``tessera_slice``. Tessera grants and reclaims slices;
Ray Train sees nodes come and go and resizes the worker group. A reclaimed
node is drained as a preemption first, so Ray does not charge it to the job's
failure budget. What Ray Train does is written to an events file the node
agent forwards (events.py): that is how the job's RESIZING and RECOVERING
states end.
"""
