"""The labels, annotations and resource names Tessera puts on (and reads from) Kubernetes objects.

One module, so the control plane that writes a binding and the device plugin that reads it back
cannot disagree about a spelling.
"""

from __future__ import annotations

DOMAIN = "tessera.io"

# the extended resource every Tessera-bound pod requests (one per slice); the device plugin in the
# node agent advertises it, so the kubelet calls the plugin's Allocate for the pod's container
SLICE_RESOURCE = f"{DOMAIN}/slice"
# the name pods set in spec.schedulerName to be scheduled by Tessera
SCHEDULER_NAME = "tessera"

# labels on pods Tessera creates (values are ids: within the 63-character label limit)
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "tessera"
JOB = f"{DOMAIN}/job"
TASK = f"{DOMAIN}/task"
ATTEMPT = f"{DOMAIN}/attempt"
GROUP = f"{DOMAIN}/group"
INDEX = f"{DOMAIN}/index"
RANK0 = f"{DOMAIN}/rank0"  # "true" on rank 0: the job's headless Service selects it
# Ray on Kubernetes: the node type of an elastic job's pod, spelled as KubeRay spells it
RAY_NODE_TYPE = "ray.io/node-type"

# annotations Tessera writes before it binds a pod
BINDING = f"{DOMAIN}/binding"  # JSON: {"node", "slices": [{gpu_uuid, mig_instance, memory_mib,
#                                  compute_pct, tier}], "env": {...}}
ALLOCATION = f"{DOMAIN}/allocation"  # "allocating" until the device plugin's Allocate took it
ALLOCATING = "allocating"
ALLOCATED = "allocated"
BOUND_AT = f"{DOMAIN}/bound-at"  # unix seconds, float: the device plugin matches the oldest first

# the label on a Tessera job that stands for pods others created (value: the pod group's key)
EXTERNAL = f"{DOMAIN}/external"

# annotations a pod created by others carries to be scheduled by Tessera (secondary scheduler)
GPU_COUNT = f"{DOMAIN}/gpus"  # whole GPUs, or the number of shared GPUs
GPU_MEMORY = f"{DOMAIN}/gpu-memory"  # per GPU: MiB as an integer, or a quantity such as 20Gi
GPU_COMPUTE = f"{DOMAIN}/gpu-compute"  # per GPU: percent of its SMs, 1-100
QUEUE = f"{DOMAIN}/queue"
PROJECT = f"{DOMAIN}/project"
PRIORITY = f"{DOMAIN}/priority"
GANG = f"{DOMAIN}/gang"
GANG_MIN = f"{DOMAIN}/gang-min-available"
# the same gang in the spellings of the coscheduling plugin (scheduler-plugins) and of Volcano
# (the current plugin: a pod-group label and a PodGroup object with minMember; the older lightweight
# one: name and min-available labels)
COSCHEDULING_LABELS = ("scheduling.x-k8s.io/pod-group", "pod-group.scheduling.sigs.k8s.io/name")
COSCHEDULING_MIN = ("pod-group.scheduling.sigs.k8s.io/min-available",)
VOLCANO_GROUP = ("scheduling.k8s.io/group-name", "scheduling.volcano.sh/group-name")
VOLCANO_MIN = ("scheduling.volcano.sh/min-available",)

# Node objects: what a node offers when no agent reported its inventory
NODE_GPU_PRODUCT = ("tessera.io/gpu-product", "nvidia.com/gpu.product")
NODE_GPU_MEMORY = ("tessera.io/gpu-memory-mib", "nvidia.com/gpu.memory")  # MiB per GPU (GFD's label)
NODE_GPU_CAPACITY = ("tessera.io/gpu", "nvidia.com/gpu")  # the count, from status.capacity
