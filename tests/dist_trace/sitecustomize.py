"""Test helper, loaded by the child processes of tests/runtime/test_distributed.py through PYTHONPATH.

When ``TUNESMITH_TRACE_WRITES`` names a file, every ``os.replace`` (how tunesmith's atomic writers and
its plot/adapter savers move a finished artifact into place) appends ``<RANK>\\t<destination>`` to it, so
the test can check that each artifact was written exactly once and by the main process.
"""

import os

if os.environ.get("TUNESMITH_TRACE_WRITES"):
    _log = os.environ["TUNESMITH_TRACE_WRITES"]
    _replace = os.replace

    def _traced_replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        with open(_log, "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('RANK', '0')}\t{os.fspath(dst)}\n")

    os.replace = _traced_replace
