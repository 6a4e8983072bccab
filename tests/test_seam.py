"""The SGLang seam (swaa_sglang/serving/seam.py): the table covers every coupling, resolves on the installed
SGLang, and an SGLang it does not match stops the plugin at load with the version and the symbol named."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from swaa_sglang.serving import seam

ROOT = Path(__file__).resolve().parents[1]
SCANNED = sorted([*(ROOT / "swaa_sglang").rglob("*.py"), *(ROOT / "attention_backends").rglob("*.py")])
SEAM_FILE = ROOT / "swaa_sglang" / "serving" / "seam.py"

# Each case breaks SGLang in the child the way another release would, calls plugin.load(), reports
# how it ended and whether anything got registered, then undoes the break. The version case goes
# through SGLang's own plugin loader (which swallows plain exceptions from a plugin).
_CHILD = r'''
import json, sys
import sglang
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend
from sglang.srt.managers.schedule_policy import PrefillAdder
from sglang.srt.plugins.hook_registry import HookRegistry
import sglang.srt.mem_cache.chunk_cache as chunk_cache

from swaa_sglang.serving import plugin, seam

def attempt(name, load):
    try:
        load()
        ended = None
    except SystemExit as e:
        ended = str(e.code)
    ours = [t.path for t in seam.HOOK_TARGETS if t.path in HookRegistry._hooks]
    print("CASE:" + json.dumps({"case": name, "exit": ended, "registered": "swaa" in ATTENTION_BACKENDS,
                                "hooks": ours}), flush=True)

def case(name, undo):
    attempt(name, plugin.load)
    undo()

real_version = sglang.__version__
sglang.__version__ = "0.5.20"
from sglang.srt.plugins import load_plugins
attempt("version", load_plugins)
sglang.__version__ = real_version

derive = ModelConfig.__dict__["_derive_hybrid_model"]
del ModelConfig._derive_hybrid_model
case("missing target", lambda: setattr(ModelConfig, "_derive_hybrid_model", derive))

reserved = PrefillAdder.__dict__["_swa_reserved_tokens"]
PrefillAdder._swa_reserved_tokens = lambda self, extend_input_len, swa_host_hit_length=0: 0
case("lost parameter", lambda: setattr(PrefillAdder, "_swa_reserved_tokens", reserved))

scales = FlashInferAttnBackend.__dict__["_kv_write_scales"]
del FlashInferAttnBackend._kv_write_scales
case("missing attribute", lambda: setattr(FlashInferAttnBackend, "_kv_write_scales", scales))

swa_chunk = chunk_cache.SWAChunkCache
del chunk_cache.SWAChunkCache
case("missing import", lambda: setattr(chunk_cache, "SWAChunkCache", swa_chunk))

attempt("restored", plugin.load)
'''


@pytest.fixture(scope="module")
def broken_sglang() -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=600)
    cases = {}
    for line in r.stdout.splitlines():
        if line.startswith("CASE:"):
            row = json.loads(line[5:])
            cases[row.pop("case")] = row
    assert "restored" in cases, r.stdout[-2000:] + r.stderr[-3000:]
    return cases


def _refused(row: dict) -> str:
    """The exit message of a refused load, after checking nothing was registered."""
    assert row["exit"] is not None, "plugin.load() did not stop the process"
    assert row["registered"] is False and row["hooks"] == [], "something was registered before the refusal"
    assert "\n" not in row["exit"], "one message, one line"
    return row["exit"]


@pytest.mark.slow
def test_unverified_sglang_version_refuses_to_start(broken_sglang):
    message = _refused(broken_sglang["version"])
    assert message.startswith("swaa-sglang: sglang: version 0.5.20 is installed"), message
    assert "verified with SGLang 0.5.17" in message and "sglang==0.5.17" in message


@pytest.mark.slow
def test_missing_hook_target_refuses_with_the_symbol(broken_sglang):
    message = _refused(broken_sglang["missing target"])
    assert message.startswith("swaa-sglang: sglang 0.5.17: hook target "
                              "sglang.srt.configs.model_config.ModelConfig._derive_hybrid_model does not resolve"), message


@pytest.mark.slow
def test_hook_target_that_lost_a_parameter_refuses(broken_sglang):
    message = _refused(broken_sglang["lost parameter"])
    assert ("hook target sglang.srt.managers.schedule_policy.PrefillAdder._swa_reserved_tokens has no parameter "
            "max_new_tokens") in message, message
    assert message.startswith("swaa-sglang: sglang 0.5.17: ")


@pytest.mark.slow
def test_missing_attribute_and_import_refuse(broken_sglang):
    message = _refused(broken_sglang["missing attribute"])
    assert "sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend._kv_write_scales is not defined" in message
    message = _refused(broken_sglang["missing import"])
    assert "sglang.srt.mem_cache.chunk_cache.SWAChunkCache does not exist" in message


@pytest.mark.slow
def test_the_restored_sglang_loads_and_registers_everything(broken_sglang):
    """Control: the same process, with SGLang as installed, loads the plugin (so the refusals above came
    from the breaks) and registers a hook on every target of the table."""
    row = broken_sglang["restored"]
    assert row["exit"] is None and row["registered"] is True
    assert set(row["hooks"]) == {t.path for t in seam.HOOK_TARGETS}


# -- the table against the code and the installed SGLang -----------------------------------------------
def test_every_entry_resolves_on_the_installed_sglang():
    assert seam.installed_sglang_version() in seam.VERIFIED_SGLANG_VERSIONS
    assert seam.problems() == []
    seam.verify()


def _sglang_couplings(path: Path) -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """(module, name) imported from SGLang, modules imported whole, and 'sglang.' strings in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imports, modules, strings = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "sglang":
            imports.update((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.split(".")[0] == "sglang")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("sglang."):
            strings.add(node.value)
    return imports, modules, strings


def test_every_sglang_import_and_target_string_is_in_the_table():
    """Every ``from sglang... import`` and every 'sglang.' string (hook targets, modules loaded by name)
    in swaa_sglang/ and attention_backends/ is an entry of the seam table, with the file named."""
    table_imports = {(e.module, e.name): e for e in seam.INTERNAL_IMPORTS}
    known_strings = {t.path for t in seam.HOOK_TARGETS} | {e.module for e in seam.INTERNAL_IMPORTS}
    missing = []
    for path in SCANNED:
        if path == SEAM_FILE:
            continue
        rel = path.relative_to(ROOT).as_posix()
        imports, modules, strings = _sglang_couplings(path)
        for module, name in sorted(imports):
            entry = table_imports.get((module, name))
            if entry is None or rel not in entry.used_in:
                missing.append(f"{rel}: from {module} import {name}")
        missing += [f"{rel}: import {m}" for m in sorted(modules) if m not in known_strings]
        missing += [f"{rel}: '{s}'" for s in sorted(strings) if s not in known_strings]
    assert missing == [], "not in the seam table:\n" + "\n".join(missing)
    assert len(SCANNED) > 10 and SEAM_FILE in SCANNED


def test_every_table_entry_names_files_that_use_it():
    """No stale entry: the files an import or attribute entry names exist and mention the name."""
    stale = []
    for entry in (*seam.INTERNAL_IMPORTS, *seam.ATTRIBUTES):
        for rel in entry.used_in:
            path = ROOT / rel
            if not path.exists() or entry.name not in path.read_text():
                stale.append(f"{rel}: {entry.name}")
    assert stale == []


def test_hook_modules_use_only_table_targets():
    from swaa_sglang.serving import plugin

    hooks = plugin.all_hooks()
    assert {h.target for h in hooks} == set(seam.HOOK_TARGETS)  # every target is used, each once
    assert len(hooks) == len(seam.HOOK_TARGETS)
    with pytest.raises(ValueError, match="hook target: sglang.srt.x.y is not in the seam table"):
        seam.hook(seam.HookTarget("sglang.srt.x.y", seam.When.AFTER, (), "test"), print)


# -- binding by signature ----------------------------------------------------------------------------------
def _target(path: str):
    return seam.target_function(path)


@pytest.mark.parametrize(
    "path, names, args, kwargs",
    [
        ("sglang.srt.managers.schedule_policy.PrefillAdder._swa_reserved_tokens",
         ("self", "extend_input_len", "max_new_tokens"), ("adder", 10, 20), {}),
        ("sglang.srt.managers.schedule_policy.PrefillAdder._swa_reserved_tokens",
         ("self", "extend_input_len", "max_new_tokens"), ("adder",), {"max_new_tokens": 20, "extend_input_len": 10}),
        ("sglang.srt.managers.schedule_policy.PrefillAdder._swa_reserved_tokens",
         ("self", "swa_host_hit_length"), ("adder", 10, 20), {}),
        ("sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new", ("batch",), ("cls", "b", "mr"), {}),
        ("sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new", ("batch",), ("cls",),
         {"batch": "b", "model_runner": "mr"}),
        ("sglang.srt.managers.schedule_batch.free_swa_out_of_window_slots", ("token_to_kv_pool_allocator",),
         ("req", 5), dict(sliding_window_size=3, page_size=1, req_to_token_pool="r2t", token_to_kv_pool_allocator="a")),
        ("sglang.srt.model_executor.runner.eager_runner.EagerRunner.load_batch", ("forward_batch",),
         ("runner",), {"forward_batch": "fb", "extra": 1}),
    ],
)
def test_argument_picker_binds_like_inspect_bind(path, names, args, kwargs):
    fn = _target(path)
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)  # init_new has a required keyword we leave out
    bound.apply_defaults()
    assert seam.argument_picker(fn, names)(args, kwargs) == tuple(bound.arguments[n] for n in names)


def test_admission_hook_bound_on_the_real_target():
    """The AFTER hook on PrefillAdder._swa_reserved_tokens, called as HookRegistry calls it, positionally
    or by keyword: the body gets (result, adder, extend_input_len, max_new_tokens) either way."""
    seen = []

    def body(result, adder, extend_input_len, max_new_tokens):
        seen.append((result, adder, extend_input_len, max_new_tokens))
        return result + 1

    wrapper = seam.Hook(seam.PREFILL_ADDER_SWA_RESERVED_TOKENS, body).wrapper()
    assert wrapper(5, "adder", 10, 20) == 6
    assert wrapper(5, "adder", max_new_tokens=20, extend_input_len=10, swa_host_hit_length=3) == 6
    assert seen == [(5, "adder", 10, 20)] * 2


def test_around_hook_proceeds_with_the_original_arguments():
    calls = []

    def original(*args, **kwargs):
        calls.append((args, kwargs))
        return "original"

    def body(proceed, adder, req):
        return (proceed(), adder, req)

    wrapper = seam.Hook(seam.PREFILL_ADDER_ADD_ONE_REQ, body).wrapper()
    assert wrapper(original, "adder", "req", True, truncation_align_size=None) == ("original", "adder", "req")
    assert calls == [(("adder", "req", True), {"truncation_align_size": None})]


def test_before_hook_never_replaces_the_arguments():
    wrapper = seam.Hook(seam.PREFILL_ADDER_ADD_CHUNKED_REQ, lambda adder, req: ("new", "args")).wrapper()
    assert wrapper("adder", req="req") is None


def test_server_args_default_is_sglangs_field_default():
    """What "not set by the user" compares with: the dataclass default, as SGLang's own code compares."""
    from sglang.srt.server_args import ServerArgs

    assert seam.server_args_default("swa_full_tokens_ratio") == ServerArgs.swa_full_tokens_ratio == 0.8
