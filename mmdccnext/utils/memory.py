"""Resident memory of this process from ``/proc/self/status`` (Linux only)."""
import re

_FIELDS = ('VmRSS', 'VmHWM')


def proc_status(fields=_FIELDS):
    """``{field: bytes}`` of the ``kB`` fields of ``/proc/self/status``: by default the
    resident set ``VmRSS`` and its high-water mark ``VmHWM``."""
    with open('/proc/self/status') as f:
        text = f.read()
    values = {}
    for field in fields:
        match = re.search(rf'^{field}:\s+(\d+) kB', text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f'/proc/self/status has no {field} field')
        values[field] = int(match.group(1)) * 1024
    return values


def reset_peak_rss():
    """Reset ``VmHWM`` to the current ``VmRSS`` (``/proc/self/clear_refs``, Linux >= 4.0)."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
