"""Every preset of every method parses, builds its model and resolves its data sources (so `make train` can start)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from lit_sr.cli import SRCLI
from lit_sr.methods import registered_methods
from lit_sr.paths import REPO
from lit_sr.presets import CONFIG_FOLDERS, PACKAGED, preset_names, preset_path
from lit_sr.registry import variants_of

PRESETS = [(m, p) for m in registered_methods() for p in preset_names(m)]


def test_every_trainable_method_has_quick_and_paper_presets_and_a_sweep():
    trainable = [m for m in registered_methods() if m != "bicubic" and not m.endswith("_test_method")]
    for method in trainable:
        assert {"quick", "paper"} <= set(preset_names(method)), method
        assert (REPO / "sweeps" / f"{method}.yaml").is_file(), method


@pytest.mark.parametrize("method", sorted(registered_methods()))
def test_every_method_is_freed_when_its_last_reference_goes(method):
    """No reference cycle keeps a method, or the locals of the code that built it: Lightning's save_hyperparameters
    keeps its own frame in a local when it looks up the caller (SRMethod passes its frame instead)."""
    gc.disable()
    try:
        built = weakref.ref(registered_methods()[method]())
        assert built() is None
    finally:
        gc.enable()


TRAINING = sorted(n for n, c in registered_methods().items() if c.network_type is not torch.nn.Module)


@pytest.mark.parametrize("method", TRAINING)
def test_every_method_refuses_a_variant_of_another_network_family(method):
    cls = registered_methods()[method]
    other = next(c for c in registered_methods().values() if c.network_type not in (torch.nn.Module, cls.network_type))
    foreign = variants_of(other.network_type)[0]
    with pytest.raises(ValueError, match=rf"variant='{foreign}' builds a {other.network_type.__name__}, but "
                       rf"{cls.__name__} trains {cls.network_type.__name__} variants \(.*\); pick one of those"):
        cls(variant=foreign)


def test_the_wheel_carries_every_lit_sr_package_and_every_preset_sweep_and_trainer_yaml():
    """pyproject.toml lists the packages by hand (the config folders are mapped into lit_sr/configs/): a new
    subpackage, config folder or YAML file the lists miss would be missing from an installed wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lit_sr").rglob("__init__.py")}
    mapped = {f"{PACKAGED.parent.name}.{PACKAGED.name}.{folder}": folder for folder in CONFIG_FOLDERS}
    assert set(setuptools["packages"]) == packages | set(mapped), "list it under [tool.setuptools] packages"
    assert setuptools["package-dir"] == mapped and not setuptools["include-package-data"]
    shipped = {p for package, folder in mapped.items() for pattern in setuptools["package-data"][package]
               for p in (REPO / folder).glob(pattern)}
    yamls = {p for folder in CONFIG_FOLDERS for p in (REPO / folder).rglob("*.y*ml")}
    assert yamls and shipped == yamls, sorted(map(str, yamls - shipped))


@pytest.mark.parametrize(("method", "preset"), PRESETS, ids=[f"{m}-{p}" for m, p in PRESETS])
def test_preset_builds_and_resolves_its_training_validation_and_test_sources(method, preset, data_root, tmp_path):
    cli = SRCLI(args=["--config", str(preset_path(method, preset)), "--run_dir", str(tmp_path)], run=False)
    dm = cli.datamodule
    assert dm.train_paths and dm.val_sets and type(cli.model).name == method
    if preset == "paper":
        assert dm.train_names == ["291"] and len(dm.train_paths) + len(dm.eval_paths("holdout")) == 291
    assert not set(dm.val_sets) & {"Set5", "Set14"}  # a preset never chooses on a benchmark
    assert dm.test_sets == ["Set5", "Set14"]


@pytest.mark.parametrize("bf16_units", [False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def test_a_bf16_preset_trains_in_fp32_on_a_cpu_without_bf16_units(bf16_units, monkeypatch, tmp_path):
    """Without AVX512-BF16 or AMX, bf16 autocast is emulated (a quick VDSR step 10.4x slower than fp32 on an AVX2
    EPYC): the quick presets' bf16-mixed trains in 32-true there, with a warning, and the run's config says so."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    args = ["--config", str(preset_path("vdsr", "quick")), "--run_dir", str(tmp_path), "--trainer.accelerator", "cpu"]
    if bf16_units:
        cli = SRCLI(args=args, run=False)
    else:
        with pytest.warns(UserWarning, match=r"trainer.precision bf16-mixed: this CPU has no bf16 units .* training "
                          r"in 32-true"):
            cli = SRCLI(args=args, run=False)
    expected = "bf16-mixed" if bf16_units else "32-true"
    assert cli.config.trainer.precision == expected  # what config.yaml records
    assert cli.trainer.precision == expected
