"""The simulated GPU spec (``--simulate-gpus 2xA100-80GB,1xT4-16GB``), shared by settings, the node
inventory and the simulated device."""

from __future__ import annotations

SIMULATE_FORM = "COUNTxMODEL-MEMORY, e.g. 2xA100-80GB or 1xH200-141GB,4xT4-16GB"


def parse_simulated_gpus(spec: str) -> list[tuple[int, str, int]]:
    """Parse ``2xA100-80GB,1xT4-16GB`` into (count, model, memory MiB) triples."""
    out: list[tuple[int, str, int]] = []
    for part in spec.split(","):
        text = part.strip()
        count_text, sep, model = text.partition("x")
        memory_text = model.rsplit("-", 1)[-1].upper() if "-" in model else ""
        if (
            not sep
            or not count_text.isdigit()
            or not memory_text.endswith("GB")
            or not memory_text[:-2].isdigit()
        ):
            raise ValueError(f"simulate_gpus {text!r} is not {SIMULATE_FORM}")
        count = int(count_text)
        if not 1 <= count <= 64:
            raise ValueError(f"simulate_gpus count must be 1..64 in {text!r}")
        out.append((count, model, int(memory_text[:-2]) * 1024))
    return out
