"""The needle-in-a-haystack quality benchmark behind ``benchmarks/quality_niah.py``: the task
(``task``), the settings it compares (``settings``), the runners (``hf_runner``, ``server_runner``),
the loop (``benchmark``) and the scoring (``scoring``)."""
