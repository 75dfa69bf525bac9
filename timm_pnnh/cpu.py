"""What the kernel says of this machine's CPU (``/proc/cpuinfo``): its name, vendor and instruction flags
decide bf16 (``training.cpu_has_native_bf16``), the coder's 1x1 kernel (``coder_ops``) and how timings are
labelled (``bench.cpu_name``)."""
from typing import Dict, Optional

CPUINFO = '/proc/cpuinfo'


def cpuinfo(path: str = CPUINFO) -> Optional[Dict[str, str]]:
    """The fields of ``path`` as ``{name: value}``, the first CPU's value where CPUs repeat a field
    (``'model name'``, ``'vendor_id'``, ``'flags'`` on x86, ``'Features'`` on Arm); None where the file
    cannot be read (not Linux)."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError:
        return None
    fields: Dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(':')
        if colon:
            fields.setdefault(name.strip(), value.strip())
    return fields
