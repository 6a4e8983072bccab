"""Every coupling of swaa-sglang to SGLang's internals, in one table, and the start-up check over it.

SGLang's ``HookRegistry.apply_hooks`` only logs a hook target it cannot resolve and carries on, so
on a release that moved a symbol the plugin would half-apply without a word. :func:`verify`, called
by the plugin before it registers anything, checks the installed SGLang version against
:data:`VERIFIED_SGLANG_VERSIONS` and that every entry of :data:`SEAM` resolves (hook targets: with
the parameters their hook reads); any failure raises one :class:`SeamError` naming the SGLang
version and the symbol.

The table has three kinds of entry:

* :class:`HookTarget`: a function SGLang's HookRegistry patches, the hook type, and the parameters
  the hook reads. Hook modules declare their hooks as ``hook(TARGET, body)``: the body receives
  the target's arguments it names, bound by the target's signature (plus ``result`` for AFTER
  hooks, a no-argument ``proceed`` for AROUND hooks).
* :class:`Attribute`: a private (or release-specific) attribute of an SGLang, FlashInfer or
  standard-library class that our code reads, writes or overrides.
* :class:`InternalImport`: a name imported from an SGLang module, with the files that import it.

docs/design/sglang-seam.md describes the seam and how to add an entry.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from typing import Any, Optional, Union

VERIFIED_SGLANG_VERSIONS = ("0.5.17",)


class SeamError(RuntimeError):
    """The installed SGLang does not match the seam: the message names the version and the symbol."""


class When(enum.Enum):
    """When a hook runs relative to its target (the names of SGLang's ``HookType`` members)."""

    BEFORE = "before"
    AFTER = "after"
    AROUND = "around"


@dataclasses.dataclass(frozen=True)
class HookTarget:
    path: str  # dotted path HookRegistry resolves
    when: When
    params: tuple[str, ...]  # the target's parameters the hook reads, in the order the hook takes them
    why: str


@dataclasses.dataclass(frozen=True)
class Attribute:
    owner: str  # dotted path of the class that defines it
    name: str
    used_in: tuple[str, ...]
    why: str


@dataclasses.dataclass(frozen=True)
class InternalImport:
    module: str
    name: str
    used_in: tuple[str, ...]
    why: str


Entry = Union[HookTarget, Attribute, InternalImport]

# -- hook targets ------------------------------------------------------------------------------------
_SERVER_ARGS = "sglang.srt.server_args.ServerArgs"
_ADDER = "sglang.srt.managers.schedule_policy.PrefillAdder"

SERVER_ARGS_POST_INIT_BEFORE = HookTarget(
    f"{_SERVER_ARGS}.__post_init__", When.BEFORE, ("self",),
    "check the SWAA args and turn the prefill CUDA graph off before SGLang resolves its defaults")
SERVER_ARGS_POST_INIT_AFTER = HookTarget(
    f"{_SERVER_ARGS}.__post_init__", When.AFTER, ("self",),
    "layer ids and sinks against the model, and the eviction pool ratio, before any weights load")
MODEL_CONFIG_DERIVE_HYBRID = HookTarget(
    "sglang.srt.configs.model_config.ModelConfig._derive_hybrid_model", When.BEFORE, ("self",),
    "window eviction: switch the hybrid SWA pool on (the layer pattern needs the layer count, known here)")
FORWARD_BATCH_INIT_NEW = HookTarget(
    "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new", When.AFTER, ("batch",),
    "attach each extend batch's prompt lengths: rows at or past them are generated tokens, decoded with FA "
    "decode (the ForwardBatch does not carry them)")
EAGER_RUNNER_LOAD_BATCH = HookTarget(
    "sglang.srt.model_executor.runner.eager_runner.EagerRunner.load_batch", When.AFTER, ("forward_batch",),
    "keep that marking on the copy of the ForwardBatch the eager runner hands the model")
REQ_INIT = HookTarget(
    "sglang.srt.managers.schedule_batch.Req.__init__", When.AFTER, ("self",),
    "window eviction: swa_evict_floor = K, so SGLang never frees a live request's sinks")
FREE_SWA_OUT_OF_WINDOW_SLOTS = HookTarget(
    # ScheduleBatch._evict_swa calls the name bound in schedule_batch (imported from mem_cache.common)
    "sglang.srt.managers.schedule_batch.free_swa_out_of_window_slots", When.AROUND, ("token_to_kv_pool_allocator",),
    "window eviction: count the SWA slots it frees (logged)")
PREFILL_ADDER_INIT = HookTarget(
    f"{_ADDER}.__init__", When.AFTER, ("self",),
    "window eviction admission: reserve running requests' future SWA growth")
PREFILL_ADDER_ADD_CHUNKED_REQ = HookTarget(
    f"{_ADDER}.add_chunked_req", When.BEFORE, ("self", "req"),
    "window eviction admission: reserve the chunked request's decode growth before its next chunk")
PREFILL_ADDER_SWA_RESERVED_TOKENS = HookTarget(
    f"{_ADDER}._swa_reserved_tokens", When.AFTER, ("self", "extend_input_len", "max_new_tokens"),
    "window eviction admission: add a new request's own decode growth to SGLang's SWA reservation")
PREFILL_ADDER_ADD_ONE_REQ = HookTarget(
    f"{_ADDER}.add_one_req", When.AROUND, ("self", "req"),
    "window eviction admission: end the pass after the request cut to a chunk (one partial request per batch)")

HOOK_TARGETS: tuple[HookTarget, ...] = (
    SERVER_ARGS_POST_INIT_BEFORE, SERVER_ARGS_POST_INIT_AFTER, MODEL_CONFIG_DERIVE_HYBRID, FORWARD_BATCH_INIT_NEW,
    EAGER_RUNNER_LOAD_BATCH, REQ_INIT, FREE_SWA_OUT_OF_WINDOW_SLOTS, PREFILL_ADDER_INIT,
    PREFILL_ADDER_ADD_CHUNKED_REQ, PREFILL_ADDER_SWA_RESERVED_TOKENS, PREFILL_ADDER_ADD_ONE_REQ,
)

# -- attributes ----------------------------------------------------------------------------------------
_BACKEND = ("attention_backends/backend.py",)
_CACHE = ("attention_backends/radix_cache.py",)
_SWA_CACHE = "sglang.srt.mem_cache.swa_radix_cache.SWARadixCache"
_FI_BACKEND = "sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend"

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(_FI_BACKEND, "_swa_kv_pool", _BACKEND,
              "the hybrid SWA pool (None without it): which layers read SWA slots, and their slot map"),
    Attribute(_FI_BACKEND, "_kv_write_scales", _BACKEND, "the FP8 scales SGLang's own KV write passes"),
    Attribute(_FI_BACKEND, "indices_updater_decode", _BACKEND, "head counts, head dim and dtypes for our plans"),
    Attribute("flashinfer.BatchDecodeWithPagedKVCacheWrapper", "_float_workspace_buffer",
              ("attention_backends/flashinfer_ops.py",), "the device of a decode wrapper's workspace"),
    Attribute(_SWA_CACHE, "_match_prefix_helper", _CACHE, "overridden: cut a match back before a freed sink"),
    Attribute(_SWA_CACHE, "_split_node", _CACHE, "called: no node straddles the sink boundary"),
    Attribute(_SWA_CACHE, "evict", _CACHE, "overridden: idle sinks SWA-locked during the SWA pass, freed last"),
    Attribute(_SWA_CACHE, "swa_evictable_size_", _CACHE, "written: sink locks move nodes out of SWA-evictable"),
    Attribute(_SWA_CACHE, "swa_protected_size_", _CACHE, "written: and into SWA-protected"),
    Attribute("sglang.srt.managers.schedule_batch.Req", "swa_evict_floor", ("swaa_sglang/serving/eviction_hooks.py",),
              "written: SGLang frees no SWA slot below it (the sinks)"),
    Attribute("sglang.srt.managers.schedule_batch.ScheduleBatch", "reqs", ("swaa_sglang/serving/batch_marking.py",),
              "read: the batch's requests, in the order of its extend rows"),
    Attribute("sglang.srt.managers.schedule_batch.Req", "origin_input_ids", ("swaa_sglang/serving/batch_marking.py",),
              "read: the prompt; positions at or past its length are generated tokens"),
    Attribute(_SERVER_ARGS, "override", ("swaa_sglang/serving/startup_hooks.py",),
              "the audited mutation of resolved server args (eviction override and pool ratio)"),
    Attribute(_SERVER_ARGS, "get_model_config", ("swaa_sglang/serving/startup_hooks.py",),
              "the model config in the launcher, before any weights load"),
    Attribute(_SERVER_ARGS, "swa_full_tokens_ratio", ("swaa_sglang/serving/startup_hooks.py",),
              "its dataclass default tells SGLang's value from the user's"),
    Attribute("argparse.ArgumentParser", "_actions", ("swaa_sglang/serving/launcher.py",),
              "make SGLang's --model-path optional (the embedded default model)"),
)

# -- imports ------------------------------------------------------------------------------------------------
_PLUGIN = ("swaa_sglang/serving/plugin.py",)
_LAUNCHER = ("swaa_sglang/serving/launcher.py",)
_BENCH = ("swaa_sglang/serving/bench.py",)
_ADMISSION = ("attention_backends/admission.py",)
_SEAM = ("swaa_sglang/serving/seam.py",)


def _imports(module: str, names: str, used_in: tuple[str, ...], why: str) -> tuple[InternalImport, ...]:
    return tuple(InternalImport(module, name, used_in, why) for name in names.split())


INTERNAL_IMPORTS: tuple[InternalImport, ...] = (
    *_imports("sglang.srt.layers.attention.attention_registry", "ATTENTION_BACKENDS register_attention_backend",
              _PLUGIN, "register the swaa backend"),
    *_imports("sglang.srt.server_args", "ATTENTION_BACKEND_CHOICES add_attention_backend_choices", _PLUGIN,
              "make 'swaa' a valid --attention-backend"),
    *_imports("sglang.srt.server_args", "ServerArgs", (*_LAUNCHER, *_SEAM), "the launcher's flags; field defaults"),
    *_imports("sglang.srt.plugins.hook_registry", "HookRegistry", (*_SEAM, *_LAUNCHER), "register and apply the hooks"),
    *_imports("sglang.srt.plugins.hook_registry", "HookType", _SEAM, "the hook types of the table"),
    *_imports("sglang.srt.plugins", "load_plugins", _LAUNCHER, "load the plugins before the parser is built"),
    *_imports("sglang.srt.mem_cache.registry", "get_radix_cache_factory register_radix_cache_backend", _PLUGIN,
              "the --radix-cache-backend swaa (sink-aware cache)"),
    *_imports("sglang.srt.environ", "envs",
              ("swaa_sglang/serving/startup_hooks.py", "attention_backends/radix_cache.py"),
              "SGLang's eviction interval and leaf-split switch"),
    *_imports("sglang.srt.configs.model_config", "is_hybrid_swa_model", ("swaa_sglang/serving/eviction_hooks.py",),
              "refuse window eviction on SGLang's own hybrid-SWA architectures"),
    *_imports("sglang.srt.configs.model_config", "AttentionArch", ("swaa_sglang/serving/checks.py",), "refuse MLA"),
    *_imports("sglang.srt.runtime_context", "get_server_args", _SEAM, "the server args published in this process"),
    *_imports("sglang.srt.server_args_config_parser", "ConfigArgumentMerger", _LAUNCHER, "--config FILE.yaml"),
    *_imports("sglang.launch_server", "run_server", _LAUNCHER, "start the server"),
    *_imports("sglang.srt.utils", "kill_process_tree", _LAUNCHER, "stop the workers on exit"),
    *_imports("sglang.benchmark.one_batch", "main", _BENCH, "the wrapped one-batch benchmark"),
    *_imports("sglang.benchmark.offline_throughput", "throughput_test", _BENCH, "the wrapped offline benchmark"),
    *_imports("sglang.benchmark.utils", "get_tokenizer", _BENCH, "the tokenizer offline_throughput uses"),
    *_imports("sglang.srt.layers.attention.flashinfer_backend", "FlashInferAttnBackend", _BACKEND,
              "the backend we extend"),
    *_imports("sglang.srt.layers.attention.flashinfer_backend", "WrapperDispatch", _BACKEND,
              "two-wrapper dispatch (a runner with a window): full layers take the paged extend path"),
    *_imports("sglang.srt.mem_cache.memory_pool", "KVWriteLoc", _BACKEND, "KV writes into full and SWA slots"),
    *_imports("sglang.srt.layers.radix_attention", "RadixAttention", _BACKEND, "type hints"),
    *_imports("sglang.srt.model_executor.forward_batch_info", "ForwardBatch", _BACKEND, "type hints"),
    *_imports("sglang.srt.model_executor.model_runner", "ModelRunner", _BACKEND, "type hints"),
    *_imports("sglang.kernels.ops.kvcache.kv_indices", "create_flashinfer_kv_indices_triton",
              ("attention_backends/flashinfer_ops.py",), "SGLang's index-list kernel"),
    *_imports("sglang.srt.managers.schedule_policy", "AddReqResult", _ADMISSION, "end an admission pass"),
    *_imports("sglang.srt.mem_cache.base_prefix_cache",
              "DecLockRefParams DecLockRefResult EvictParams EvictResult IncLockRefResult InsertParams InsertResult",
              _CACHE,
              "the cache interface we override"),
    *_imports("sglang.srt.mem_cache.swa_radix_cache", "SWARadixCache", _CACHE, "the cache we extend"),
    *_imports("sglang.srt.mem_cache.allocator.swa", "PureSWATokenToKVPoolAllocator", _CACHE,
              "refuse the all-SWA allocator"),
    *_imports("sglang.srt.mem_cache.chunk_cache", "SWAChunkCache", _CACHE, "the cache with --disable-radix-cache"),
)

SEAM: tuple[Entry, ...] = (*HOOK_TARGETS, *ATTRIBUTES, *INTERNAL_IMPORTS)


# -- verification -------------------------------------------------------------------------------------------
def installed_sglang_version() -> str:
    import sglang

    return sglang.__version__


def target_function(path: str) -> Callable:
    """The function a hook target names, unwrapped from classmethod/staticmethod (as HookRegistry does)."""
    owner_path, name = path.rsplit(".", 1)
    owner = pkgutil.resolve_name(owner_path)
    raw = owner.__dict__.get(name) if isinstance(owner, type) else None
    if isinstance(raw, (classmethod, staticmethod)):
        return raw.__func__
    return getattr(owner, name)


def _defines_attribute(cls: type, name: str) -> bool:
    """A class attribute, a dataclass field, or an instance attribute assigned in a class of the MRO."""
    if hasattr(cls, name) or name in getattr(cls, "__dataclass_fields__", {}):
        return True
    assigned = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=\n]+)?=(?!=)")
    return any(assigned.search(_class_source(klass)) for klass in cls.__mro__)


@functools.lru_cache(maxsize=None)
def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # builtins, classes without source files
        return ""


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)  # *args, **kwargs: no name to bind


def _check(entry: Entry) -> Optional[str]:
    """What is wrong with one entry on the installed SGLang, or None."""
    if isinstance(entry, HookTarget):
        try:
            fn = target_function(entry.path)
        except (ImportError, AttributeError, ValueError) as e:
            return f"hook target {entry.path} does not resolve ({type(e).__name__}: {e})"
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError) as e:
            return f"hook target {entry.path} has no signature ({e})"
        missing = [p for p in entry.params if p not in params or params[p].kind in _VARIADIC]
        if missing:
            return f"hook target {entry.path} has no parameter {', '.join(missing)} (signature {inspect.signature(fn)})"
        return None
    if isinstance(entry, Attribute):
        try:
            owner = pkgutil.resolve_name(entry.owner)
        except (ImportError, AttributeError, ValueError) as e:
            return f"{entry.owner} does not resolve ({type(e).__name__}: {e})"
        if not _defines_attribute(owner, entry.name):
            return f"{entry.owner}.{entry.name} is not defined"
        return None
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        return f"module {entry.module} does not import ({e})"
    if not hasattr(module, entry.name):
        return f"{entry.module}.{entry.name} does not exist"
    return None


_verified = False


def problems(entries: tuple[Entry, ...] = SEAM) -> list[str]:
    """Every entry that does not resolve on the installed SGLang, described."""
    return [p for p in map(_check, entries) if p is not None]


def verify() -> None:
    """Refuse an SGLang release this plugin was not verified with, or one where an entry does not resolve.

    Raises :class:`SeamError` with one message naming the installed version and every symbol that
    failed. Checked once per process.
    """
    global _verified
    if _verified:
        return
    version = installed_sglang_version()
    if version not in VERIFIED_SGLANG_VERSIONS:
        raise SeamError(
            f"sglang: version {version} is installed; swaa-sglang is verified with SGLang "
            f"{', '.join(VERIFIED_SGLANG_VERSIONS)} only (it patches SGLang internals that move between releases); "
            f"allowed: pip install 'sglang=={VERIFIED_SGLANG_VERSIONS[-1]}'"
        )
    found = problems()
    if found:
        raise SeamError(f"sglang {version}: " + "; ".join(found) + " (the seam table in swaa_sglang/serving/seam.py "
                        "lists what swaa-sglang needs)")
    _verified = True


# -- hooks as data ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Hook:
    """A hook body on one :class:`HookTarget` of the table."""

    target: HookTarget
    body: Callable

    def wrapper(self) -> Callable:
        """The callable HookRegistry applies: it binds the target's arguments by the target's signature
        and calls the body with those the target entry names (``result`` / ``proceed`` first)."""
        pick = argument_picker(target_function(self.target.path), self.target.params)
        body = self.body
        if self.target.when is When.BEFORE:
            def wrapper(*args, **kwargs):
                body(*pick(args, kwargs))
                return None  # never replaces the target's arguments
        elif self.target.when is When.AFTER:
            def wrapper(result, *args, **kwargs):
                return body(result, *pick(args, kwargs))
        else:
            def wrapper(original, *args, **kwargs):
                return body(lambda: original(*args, **kwargs), *pick(args, kwargs))
        wrapper.__name__ = getattr(body, "__name__", "hook")
        wrapper.__qualname__ = getattr(body, "__qualname__", wrapper.__name__)
        return wrapper


def hook(target: HookTarget, body: Callable) -> Hook:
    """Declare ``body`` as the hook on ``target`` (a table entry); :func:`register` applies it."""
    if target not in HOOK_TARGETS:
        raise ValueError(f"hook target: {target.path} is not in the seam table; allowed: seam.HOOK_TARGETS")
    return Hook(target, body)


def argument_picker(fn: Callable, names: tuple[str, ...]) -> Callable[[tuple, dict], tuple]:
    """``pick(args, kwargs)``: the values of ``names`` in a call of ``fn(*args, **kwargs)``.

    The same binding as ``inspect.signature(fn).bind(*args, **kwargs)`` with defaults applied, for the
    named parameters only, worked out once from the signature (the hot hooks run per request and step).
    """
    params = inspect.signature(fn).parameters
    order = list(params)
    slots = []
    for name in names:
        p = params[name]
        positional = p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        slots.append((name, order.index(name) if positional else None, p.default))

    def pick(args: tuple, kwargs: dict) -> tuple:
        out = []
        for name, index, default in slots:
            if index is not None and index < len(args):
                out.append(args[index])
            elif name in kwargs:
                out.append(kwargs[name])
            elif default is not inspect.Parameter.empty:
                out.append(default)
            else:
                raise TypeError(f"{fn.__qualname__}() called without its argument {name!r}")
        return tuple(out)

    return pick


def register(hooks: tuple[Hook, ...]) -> None:
    """Register hooks with SGLang's HookRegistry (applied by ``HookRegistry.apply_hooks``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for h in hooks:
        HookRegistry.register(h.target.path, h.wrapper(), HookType[h.target.when.name])


# -- readers of SGLang state ------------------------------------------------------------------------------------
def published_server_args() -> Optional[Any]:
    """The server args published in this process, or None where none are (a Req built outside a server)."""
    from sglang.srt.runtime_context import get_server_args

    try:
        return get_server_args()
    except ValueError:  # SGLang's "Global server args is not set yet!"
        return None


def server_args_default(name: str) -> Any:
    """The dataclass default of a ``ServerArgs`` field."""
    from sglang.srt.server_args import ServerArgs

    return {f.name: f.default for f in dataclasses.fields(ServerArgs)}[name]
