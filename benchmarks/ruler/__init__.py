"""RULER-style synthetic long-context tasks behind ``benchmarks/quality_ruler.py``: generation
(``task``: single, multi-key and multi-value needles, variable tracking, common-word extraction,
at a target length in tokens, test and calibration splits) and string-match scoring with Wilson
intervals (``scoring``)."""
