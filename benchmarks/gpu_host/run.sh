#!/usr/bin/env bash
# Run on the GPU host, from the repository root, after the offline stack is in /tmp/site (README.md here):
#   bash benchmarks/gpu_host/run.sh [install] [ops] [tests] [models] [examples] [eviction] [bench] [e2e] [onebatch] [soak] [faults] [determinism] [retraction] [quality] [concurrency] [prefix] [ruler] [calibrate] [savejit] [loadjit]
#   (default: ops tests models bench)
# Installs this checkout into /tmp/site the way SGLang finds plugins (entry point
# metadata), then runs the given steps; logs go to $SWAA_RESULTS_DIR (default $OUT).
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
export SWAA_CACHE_DIR=${SWAA_CACHE_DIR:-/tmp/swaa_cache}
export SWAA_RESULTS_DIR=${SWAA_RESULTS_DIR:-${OUT:-/tmp/out}}
export SWAA_SMOLLM2_SOURCE=${SWAA_SMOLLM2_SOURCE:-/tmp/site/models/SmolLM2-135M-Instruct.Q4_1.gguf}
# essays (long text for the engine, determinism and quality runs): carry .gpudata (made by
# `python -c "from swaa_sglang.data import essays_dir; print(essays_dir())"` here, copied to
# .gpudata/essays) with the install call; they stay in /tmp/essays while the host is up
if [ -z "${SWAA_SKIP_INSTALL:-}" ] && [ -d .gpudata/essays ]; then  # once, atomically (parallel jobs read it)
  rm -rf /tmp/essays.new && cp -r .gpudata/essays /tmp/essays.new && rm -rf /tmp/essays && mv /tmp/essays.new /tmp/essays
fi
if [ -d /tmp/essays ]; then export SWAA_ESSAYS_DIR=/tmp/essays
else echo "run.sh: no essays (/tmp/essays): carry .gpudata; steps tests, eviction, determinism and quality need them" >&2; fi
mkdir -p "$SWAA_RESULTS_DIR"
# .whl/: wheels the bundle lacks (soundfile + cffi + pycparser: SGLang's HTTP server imports soundfile)
[ -z "${SWAA_SKIP_INSTALL:-}" ] && [ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>&1 | grep -v -i warn
# SWAA_SKIP_INSTALL=1: already installed (parallel runs on several GPUs must not install at once)
[ -z "${SWAA_SKIP_INSTALL:-}" ] && python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site . 2>&1 | grep -v -i warn
steps=${*:-ops tests models bench}
# FlashInfer's AOT directory: modules there are loaded without compiling (savejit / loadjit below)
aot=${SWAA_FLASHINFER_AOT:-/tmp/site/flashinfer/data/aot}
# PYTEST_ARGS: extra pytest arguments, split on spaces (e.g. PYTEST_ARGS="-x --maxfail=1");
# PYTEST_K: one pytest -k expression, spaces allowed (e.g. PYTEST_K="tensor or True");
# LOG_TAG: suffix for the log names
tag=${LOG_TAG:-}
kexpr=(); [ -n "${PYTEST_K:-}" ] && kexpr=(-k "$PYTEST_K")
rc=0
logged() {  # logged NAME CMD...: run CMD, its output also in $SWAA_RESULTS_DIR/NAME$tag.log; keep the worst exit code
  "${@:2}" 2>&1 | tee "$SWAA_RESULTS_DIR/$1$tag.log"; rc=$((rc | ${PIPESTATUS[0]}))
}
pytest_step() {  # pytest_step NAME PYTEST_ARGS...
  logged "$1" python3 -m pytest -p no:cacheprovider -q -s "${@:2}" ${PYTEST_ARGS:-} "${kexpr[@]}"
}
# soak / faults: a SWAA server on the Qwen3-4B shape (dummy weights); SOAK_ARGS adds server flags;
# SOAK_CLIENT_ARGS replaces the soak client's (default 1,000 requests at 64), FAULT_ARGS the fault client's (default --rounds 2)
# SOAK_PRESET=vanilla: stock SGLang (flashinfer backend, no SWAA) through the same launcher, as a control
swaa="--swaa-preset ${SOAK_PRESET:-sink100-2k}"; [ "${SOAK_PRESET:-}" = vanilla ] && swaa="--attention-backend flashinfer"
server="--model-path benchmarks/models/qwen3-4b-2507 --load-format dummy --skip-tokenizer-init $swaa --mem-fraction-static 0.8"
for step in $steps; do
  case $step in
    ops)         pytest_step gpu_ops tests/test_gpu_ops.py ;;
    tests)       pytest_step gpu_engine tests/test_gpu_engine.py ;;
    models)      pytest_step gpu_models tests/test_gpu_models.py ;;
    examples)    pytest_step gpu_examples -m gpu tests/test_examples.py ;;
    eviction)    pytest_step gpu_eviction tests/test_gpu_eviction.py ;;
    determinism) pytest_step gpu_determinism tests/test_gpu_determinism.py ;;
    retraction)  pytest_step gpu_retraction tests/test_gpu_retraction.py ;;
    e2e)         logged e2e python3 benchmarks/bench_e2e.py ${E2E_ARGS:-} --out "$SWAA_RESULTS_DIR/e2e$tag.json" ;;
    onebatch)    # SGLang's own one-batch benchmark per setting (python -m swaa_sglang.serving.bench one_batch); ONEBATCH_ARGS
                 logged one_batch python3 benchmarks/bench_one_batch.py --no-progress ${ONEBATCH_ARGS:-} --out "$SWAA_RESULTS_DIR/one_batch$tag.json" ;;
    soak)        logged soak python3 benchmarks/soak.py --launch "$server ${SOAK_ARGS:-}" --server-log "$SWAA_RESULTS_DIR/soak_server$tag.log" ${SOAK_CLIENT_ARGS:---requests 1000 --concurrency 64} --out "$SWAA_RESULTS_DIR/soak$tag.json" ;;
    faults)      logged faults python3 benchmarks/soak.py --faults --launch "$server --context-length 40960 ${SOAK_ARGS:-}" --server-log "$SWAA_RESULTS_DIR/faults_server$tag.log" ${FAULT_ARGS:---rounds 2} --out "$SWAA_RESULTS_DIR/faults$tag.json" ;;
    quality)     # needle accuracy per setting through live servers on SmolLM2 real weights, one server per setting
                 logged quality python3 benchmarks/quality_niah.py --runner launch --no-progress \
                   --launch-args "--mem-fraction-static 0.5 ${QUALITY_LAUNCH_ARGS:-}" \
                   ${QUALITY_ARGS:---context-lengths 4096 --windows 512 --samples 11} --out "$SWAA_RESULTS_DIR/quality_server$tag.json"
                 # the servers' logs and configs as one file (a device call returns at most 8)
                 [ -d "$SWAA_RESULTS_DIR/quality_server$tag" ] && tar czf "$SWAA_RESULTS_DIR/quality_server$tag.servers.tgz" \
                   -C "$SWAA_RESULTS_DIR" "quality_server$tag" && rm -rf "$SWAA_RESULTS_DIR/quality_server$tag" ;;
    ruler)       # RULER-style tasks per setting through live servers (quality_ruler.py --runner launch); RULER_ARGS
                 logged ruler python3 benchmarks/quality_ruler.py --runner launch --no-progress ${RULER_ARGS:-} --out "$SWAA_RESULTS_DIR/ruler$tag.json" ;;
    calibrate)   # the full-layer calibrator (python -m swaa_sglang.calibrate); CALIBRATE_ARGS (--window, --full-layers, ...)
                 logged calibrate python3 -m swaa_sglang.calibrate --device cuda --no-progress ${CALIBRATE_ARGS:-} --out "$SWAA_RESULTS_DIR/calibrate$tag.yaml" ;;
    prefix)      logged prefix_cache python3 benchmarks/bench_prefix_cache.py ${PREFIX_ARGS:-} --out "$SWAA_RESULTS_DIR/prefix_cache$tag.json" ;;
    concurrency) logged concurrency python3 benchmarks/bench_concurrency.py ${CONC_ARGS:-} --out "$SWAA_RESULTS_DIR/concurrency$tag.json" ;;
    bench)       logged bench_ops python3 benchmarks/bench_attention_ops.py ${BENCH_ARGS:-} --out "$SWAA_RESULTS_DIR/ops$tag.json" ;;
    savejit)     # this host's compiled FlashInfer modules, as <ver>/<arch>/<name>/<name>.so, in <=15 MiB parts
                 rm -rf /tmp/jit && mkdir -p /tmp/jit
                 for so in "$HOME"/.cache/flashinfer/*/*/cached_ops/*/*.so; do
                   [ -e "$so" ] || continue
                   d=${so%/*}; name=${d##*/}; va=${d%/cached_ops/*}; va=${va#"$HOME"/.cache/flashinfer/}
                   mkdir -p "/tmp/jit/$va/$name" && cp "$so" "/tmp/jit/$va/$name/"
                 done
                 rm -f "${OUT:-/tmp/out}"/jitcache.tgz.*
                 tar czf - -C /tmp/jit . | split -b 15M -d - "${OUT:-/tmp/out}/jitcache.tgz."
                 n=$(ls "${OUT:-/tmp/out}"/jitcache.tgz.* | wc -l)
                 echo "savejit: $(find /tmp/jit -name '*.so' | wc -l) modules ($(ls /tmp/jit | tr '\n' ' ')), $n parts"
                 # the device tool returns at most 8 files (64 MiB) per call, and a carry is at most 64 MiB
                 if [ "$n" -gt 4 ]; then echo "savejit: $n parts (over 60 MiB) will not come back or travel whole" >&2; rc=1; fi ;;
    loadjit)     # carried parts (.gpujit) -> FlashInfer's AOT directory, only the modules built for this host's
                 # FlashInfer version and GPU arch; the archive is checked whole before anything is installed
                 ws=${SWAA_FLASHINFER_WORKSPACE:-$(python3 -c "import flashinfer.jit.env as e; print(e.FLASHINFER_WORKSPACE_DIR)")}
                 va="${ws%/*}"; va="${va##*/}/${ws##*/}"
                 rm -rf /tmp/jitload && mkdir -p /tmp/jitload
                 if ! cat .gpujit/jitcache.tgz.* | tar xzf - -C /tmp/jitload; then
                   echo "loadjit: the .gpujit archive is incomplete or damaged; nothing installed" >&2; rc=1
                 elif [ ! -d "/tmp/jitload/$va" ]; then
                   echo "loadjit: no modules for this host's $va (archive has: $(cd /tmp/jitload && ls -d */* | tr '\n' ' ')); nothing installed"
                 else
                   mkdir -p "$aot" && cp -r "/tmp/jitload/$va"/. "$aot"/
                   echo "loadjit: $(ls "/tmp/jitload/$va" | wc -l) FlashInfer modules for $va in $aot"
                 fi ;;
    install) ;;
    *)           echo "run.sh: unknown step '$step' (see the list at the top of this file)" >&2; rc=1 ;;
  esac
done
exit $rc
