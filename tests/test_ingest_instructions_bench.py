"""benchmarks/ingest_instructions.py: reading callgrind_annotate's output (the callgrind runs
themselves take minutes under valgrind and are not part of the test suite)."""

from __future__ import annotations

from bench_helpers import load_benchmark

ANNOTATE = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,000,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                   file:function
--------------------------------------------------------------------------------
600,000 (60.00%)  ???:0x0000000000113c60 [/x/av.libs/libavcodec-5e6b81c2.so.62]
250,000 (25.00%)  ./string/memset.S:__memset_avx2 [/usr/lib/x86_64-linux-gnu/libc.so.6]
 90,000 ( 9.00%)  ???:0x0000000000417920 [/x/av.libs/libavcodec-5e6b81c2.so.62]
 10,000 ( 1.00%)  Python/ceval.c:_PyEval_EvalFrameDefault
"""


def test_instructions_are_summed_by_shared_object() -> None:
    bench = load_benchmark("ingest_instructions")
    total, objects = bench.parse_annotate(ANNOTATE)
    assert total == 1_000_000
    assert objects == {"libavcodec-5e6b81c2.so.62": 690_000, "libc.so.6": 250_000, "?": 10_000}
