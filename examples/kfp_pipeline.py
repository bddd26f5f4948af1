"""A Kubeflow pipeline with Tessera steps: train on a GPU slice, then evaluate, each a Tessera job.

Compile it to KFP's IR YAML:  python examples/kfp_pipeline.py pipeline.yaml
Set TESSERA_URL and TESSERA_TOKEN in the steps' environment (e.g. from a Kubernetes secret).
"""

import sys

from kfp import compiler, dsl

from tessera.kfp.steps import cli_component, job_component

tessera_job = job_component()
tessera_submit = cli_component()


def train_spec(steps: int) -> dict:
    return {
        "name": "kfp-train",
        "groups": [
            {
                "command": ["python", "examples/hello_train.py"],
                "env": {"STEPS": str(steps)},
                "resources": {"gpu_memory": "8Gi", "gpu_compute": 30},
            }
        ],
    }


@dsl.pipeline(name="tessera-train-and-evaluate", description="Two Tessera jobs in a row.")
def train_and_evaluate() -> None:
    train = tessera_job(
        job_spec=train_spec(5),
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        step=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    )
    train.set_retry(num_retries=2)  # a retried step re-attaches to its job
    evaluate = tessera_submit(
        name="kfp-eval", command="python -c 'print(\"evaluated\")'", gpu_memory="4Gi", gpu_compute=10
    )
    evaluate.after(train)


if __name__ == "__main__":
    compiler.Compiler().compile(train_and_evaluate, sys.argv[1] if len(sys.argv) > 1 else "pipeline.yaml")
