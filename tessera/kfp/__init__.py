"""Kubeflow Pipelines steps that run Tessera jobs (kfp 2.x, the ``kfp`` extra): ``job_component``
(a Python component: submit, re-attach on retry, stream logs, cancel when terminated) and
``cli_component`` (a container component wrapping ``tessera submit``)."""
