"""The GPU-host runner scripts (benchmarks/gpu_host/: pair.sh, queue.sh, run.sh) driven on CPU, pair.sh and
queue.sh against a fake run.sh:
job strings reach the steps with their quoting, cards are assigned, failures are reported, and a
background queue can be waited on and skipped, its jobs running from the snapshot taken at start."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

GPU_HOST = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_host"

FAKE_HOST = """#!/usr/bin/env bash
# fake run.sh: record what the job passed, then act on the step name
{ echo "cuda=$CUDA_VISIBLE_DEVICES"; echo "k=${PYTEST_K:-}"; echo "tag=${LOG_TAG:-}"; echo "skip_install=$SWAA_SKIP_INSTALL";
  for s in "$@"; do echo "step=$s"; done; } > "$SWAA_RESULTS_DIR/args.txt"
for s in "$@"; do
  case $s in
    fail) exit 3 ;;
    hang) echo $$ > "$SWAA_RESULTS_DIR/hang.pid"; sleep 300 & echo $! > "$SWAA_RESULTS_DIR/child.pid"; wait ;;
  esac
done
exit 0
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "benchmarks" / "gpu_host").mkdir(parents=True)
    for name in ("job.sh", "pair.sh", "queue.sh"):
        shutil.copy(GPU_HOST / name, root / "benchmarks" / "gpu_host" / name)
    (root / "benchmarks" / "gpu_host" / "run.sh").write_text(FAKE_HOST)
    return root


def _args(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OUT": str(tmp_path / "out"), "SWAA_QUEUE_DIR": str(tmp_path / "queue")}


def test_gpu_pair_passes_quoted_jobs_one_card_each_and_fails_when_a_job_does(tree, tmp_path):
    r = subprocess.run(["bash", "benchmarks/gpu_host/pair.sh", "60", 'PYTEST_K="tensor or True" LOG_TAG=_a models',
                        "LOG_TAG=_b ops fail"], cwd=tree, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert _args(Path("/tmp/res/job0/args.txt")) == ["cuda=0", "k=tensor or True", "tag=_a", "skip_install=1",
                                                     "step=models"]
    assert _args(Path("/tmp/res/job1/args.txt")) == ["cuda=1", "k=", "tag=_b", "skip_install=1", "step=ops",
                                                     "step=fail"]
    assert Path("/tmp/res/job1/console.txt").read_text().splitlines()[-1] == "exit 3"
    assert len(list((tmp_path / "out").glob("results_*.tgz"))) == 1


def _queue(tree: Path, tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "benchmarks/gpu_host/queue.sh", *args], cwd=tree, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as ended
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"


def test_gpu_queue_refuses_empty_work_and_does_not_wait_on_a_missing_runner(tree, tmp_path):
    r = _queue(tree, tmp_path, "start")
    assert r.returncode == 2 and "at least one job" in r.stderr
    r = _queue(tree, tmp_path, "wait", "600", timeout=60)  # a fresh host: no queue, no endless wait
    assert r.returncode == 1 and "no queue is running" in r.stderr
    r = subprocess.run(["bash", "benchmarks/gpu_host/pair.sh", "60", "LOG_TAG=_only_env"], cwd=tree, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no steps in job" in r.stdout + r.stderr  # not run.sh's default steps
    assert not Path("/tmp/res/job0/args.txt").exists()


@pytest.mark.slow
def test_gpu_queue_runs_in_the_background_and_a_hung_job_can_be_skipped(tree, tmp_path):
    q = tmp_path / "queue"
    r = _queue(tree, tmp_path, "start", 'PYTEST_K="a or b" ops', "hang", "CUDA_VISIBLE_DEVICES=0,1 models")
    assert r.returncode == 0, r.stderr
    # the queue runs from the snapshot taken at start: breaking the tree now changes nothing
    (tree / "benchmarks" / "gpu_host" / "run.sh").write_text("#!/usr/bin/env bash\nexit 9\n")
    assert _queue(tree, tmp_path, "start", "ops").returncode == 2  # one queue at a time

    deadline = time.time() + 60
    while not (q / "job01" / "child.pid").exists() and time.time() < deadline:
        time.sleep(0.2)
    r = _queue(tree, tmp_path, "wait", "1")
    assert r.returncode == 3, r.stdout  # still running: the hung job
    assert "end job 00: exit 0" in r.stdout and "start job 01: hang" in r.stdout
    with tarfile.open(next((tmp_path / "out").glob("queue_*.tgz"))) as t:
        assert "./job00/args.txt" in t.getnames() and not any(n.startswith("./tree") for n in t.getnames())

    hung = [int((q / "job01" / f).read_text()) for f in ("hang.pid", "child.pid")]
    r = _queue(tree, tmp_path, "skip")
    assert r.returncode == 0 and "skipped the running job" in r.stdout
    r = _queue(tree, tmp_path, "wait", "60")
    assert r.returncode == 1, r.stdout  # the skipped job counts as failed; the queue went on
    assert "end job 02: exit 0" in r.stdout and "queue done: exit 1" in r.stdout
    assert not any(_alive(pid) for pid in hung)  # the job and what it started are gone
    assert _args(q / "job00" / "args.txt") == ["cuda=0", "k=a or b", "tag=", "skip_install=1", "step=ops"]
    assert _args(q / "job02" / "args.txt") == ["cuda=0,1", "k=", "tag=", "skip_install=1", "step=models"]


def test_two_gpu_queues_run_side_by_side_each_in_its_own_directory(tree, tmp_path):
    """Two lanes on one card: SWAA_QUEUE_DIR names each queue; neither refuses the other, each runs
    its own jobs, and each wait brings back a tarball named after its directory with only its jobs."""
    env_b = {**_env(tmp_path), "SWAA_QUEUE_DIR": str(tmp_path / "queueB")}
    assert _queue(tree, tmp_path, "start", "LOG_TAG=_a ops").returncode == 0
    r = subprocess.run(["bash", "benchmarks/gpu_host/queue.sh", "start", "LOG_TAG=_b models", "ops"], cwd=tree, env=env_b,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _queue(tree, tmp_path, "wait", "60").returncode == 0
    r = subprocess.run(["bash", "benchmarks/gpu_host/queue.sh", "wait", "60"], cwd=tree, env=env_b,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "end job 01: exit 0" in r.stdout, r.stdout
    assert _args(tmp_path / "queue" / "job00" / "args.txt")[2:] == ["tag=_a", "skip_install=1", "step=ops"]
    assert _args(tmp_path / "queueB" / "job00" / "args.txt")[2:] == ["tag=_b", "skip_install=1", "step=models"]
    with tarfile.open(next((tmp_path / "out").glob("queueB_*.tgz"))) as t:
        assert {"./job00/args.txt", "./job01/args.txt"} <= set(t.getnames())
    with tarfile.open(next((tmp_path / "out").glob("queue_*.tgz"))) as t:
        assert "./job00/args.txt" in t.getnames() and "./job01/args.txt" not in t.getnames()


def test_gpu_host_saves_flashinfer_kernels_and_loads_them_as_aot_modules(tmp_path):
    """savejit packs every compiled FlashInfer module of this host into <= 15 MiB parts; loadjit (the next
    host, parts carried in .gpujit) unpacks them where FlashInfer loads modules without compiling.
    An unknown step fails instead of being skipped."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "gpu_host").mkdir(parents=True)
    shutil.copy(GPU_HOST / "run.sh", root / "benchmarks" / "gpu_host" / "run.sh")
    home = tmp_path / "home"
    modules = {"batch_prefill_a": os.urandom(40_000), "single_decode_b": os.urandom(1000)}
    for name, data in modules.items():
        d = home / ".cache" / "flashinfer" / "0.6.15" / "90a" / "cached_ops" / name
        d.mkdir(parents=True)
        (d / f"{name}.so").write_bytes(data)
        (d / "build.ninja").write_text("not carried")
    env = {**os.environ, "HOME": str(home), "OUT": str(tmp_path / "out"), "SWAA_SKIP_INSTALL": "1",
           "SWAA_RESULTS_DIR": str(tmp_path / "res"), "SWAA_FLASHINFER_AOT": str(tmp_path / "aot"),
           "SWAA_FLASHINFER_WORKSPACE": str(home / ".cache" / "flashinfer" / "0.6.15" / "90a")}
    (tmp_path / "out").mkdir()

    def host(*steps):
        return subprocess.run(["bash", "benchmarks/gpu_host/run.sh", *steps], cwd=root, env=env, capture_output=True,
                              text=True, timeout=60)

    r = host("savejit")
    assert r.returncode == 0, r.stderr
    assert "savejit: 2 modules (0.6.15 ), 1 parts" in r.stdout
    parts = sorted((tmp_path / "out").glob("jitcache.tgz.*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    (root / ".gpujit").mkdir()
    # a damaged archive installs nothing (a partial .so would be loaded without compiling)
    (root / ".gpujit" / parts[0].name).write_bytes(parts[0].read_bytes()[:-200])
    r = host("loadjit")
    assert r.returncode == 1 and "damaged; nothing installed" in r.stderr
    assert not (tmp_path / "aot").exists() or not any((tmp_path / "aot").iterdir())
    for part in parts:
        shutil.copy(part, root / ".gpujit" / part.name)
    # another FlashInfer version or GPU arch: nothing installed
    env["SWAA_FLASHINFER_WORKSPACE"] = str(home / ".cache" / "flashinfer" / "0.6.16" / "90a")
    r = host("loadjit")
    assert r.returncode == 0 and "no modules for this host's 0.6.16/90a" in r.stdout
    assert not (tmp_path / "aot").exists() or not any((tmp_path / "aot").iterdir())
    env["SWAA_FLASHINFER_WORKSPACE"] = str(home / ".cache" / "flashinfer" / "0.6.15" / "90a")
    r = host("loadjit")
    assert r.returncode == 0, r.stderr
    assert "loadjit: 2 FlashInfer modules for 0.6.15/90a" in r.stdout
    for name, data in modules.items():
        assert (tmp_path / "aot" / name / f"{name}.so").read_bytes() == data
    assert not list((tmp_path / "aot").glob("*/build.ninja"))
    r = host("loadjit", "savjit")
    assert r.returncode == 1 and "unknown step 'savjit'" in r.stderr


def test_gpu_host_soak_and_fault_steps_build_the_server_command(tmp_path):
    """The faults step runs two rounds by default; SOAK_PRESET=vanilla serves stock SGLang (flashinfer,
    no SWAA flag) through the same launcher as a control; SOAK_ARGS / FAULT_ARGS reach the command."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "gpu_host").mkdir(parents=True)
    shutil.copy(GPU_HOST / "run.sh", root / "benchmarks" / "gpu_host" / "run.sh")
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "python3").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (fakebin / "python3").chmod(0o755)
    base = {**os.environ, "PATH": f"{fakebin}:{os.environ['PATH']}", "SWAA_SKIP_INSTALL": "1",
            "SWAA_RESULTS_DIR": str(tmp_path / "res"), "ARGS_OUT": str(tmp_path / "args.txt")}

    def argv(step, **env):
        r = subprocess.run(["bash", "benchmarks/gpu_host/run.sh", step], cwd=root, env={**base, **env},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return (tmp_path / "args.txt").read_text().splitlines()

    a = argv("faults")
    launch = a[a.index("--launch") + 1]
    assert "--faults" in a and a[a.index("--rounds") + 1] == "2"
    assert "--swaa-preset sink100-2k" in launch and "--context-length 40960" in launch
    a = argv("faults", SOAK_PRESET="vanilla", FAULT_ARGS="--rounds 3 --slow-recovery 5", SOAK_ARGS="--tp 2")
    launch = a[a.index("--launch") + 1]
    assert "--attention-backend flashinfer" in launch and "--swaa" not in launch and "--tp 2" in launch
    assert a[a.index("--rounds") + 1] == "3" and a[a.index("--slow-recovery") + 1] == "5"
    a = argv("soak", SOAK_ARGS="--swaa-evict-window on")
    launch = a[a.index("--launch") + 1]
    assert "--swaa-preset sink100-2k" in launch and launch.endswith("--swaa-evict-window on")
    assert a[a.index("--requests") + 1] == "1000" and a[a.index("--concurrency") + 1] == "64"
    a = argv("quality", QUALITY_ARGS="--windows 256,1024 --samples 8")
    assert a[0] == "benchmarks/quality_niah.py" and a[a.index("--runner") + 1] == "launch"
    assert a[a.index("--windows") + 1] == "256,1024" and a[a.index("--out") + 1].endswith("res/quality_server.json")
    assert a[a.index("--launch-args") + 1].startswith("--mem-fraction-static 0.5")
    a = argv("onebatch", ONEBATCH_ARGS="--settings vanilla,balanced --lengths 131072")
    assert a[0] == "benchmarks/bench_one_batch.py" and a[a.index("--settings") + 1] == "vanilla,balanced"
    assert a[a.index("--out") + 1].endswith("res/one_batch.json")
