"""Tessera's Kubernetes device plugin: advertises `tessera.io/slice` to the kubelet and, in Allocate,
hands the container the slices the control plane wrote into the pod's binding annotation.

`api.proto` is our copy of the kubelet's device plugin API (v1beta1); `api_pb2*.py` are generated
from it by scripts/gen-deviceplugin and are not edited by hand.
"""
