"""Every config in configs/ parses and builds its model through LacoatCLI.

The real encoders get tiny random weights saved the way downloads are (a CLAP checkpoint file, a
transformers folder) and are loaded through the same path; data roots point at generated data.
"""

import importlib.util

import pytest
import torch

from lacoat.data.datamodule import RetrievalDataModule
from lacoat.lightning_cli import LacoatCLI
from lacoat.models.cascade import IteratingCascade, SingleCascade, StackingCascade
from lacoat.module import LacoatModule
from tests.conftest import REPO
from tests.helpers import save_random_clap_checkpoint, save_tiny_text_model

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
VARIANTS = sorted(p.name for p in (REPO / "configs" / "demo_variants").glob("*.yaml"))
RECIPE = "twins_recipe.yaml"  # the study's final recipe: other variants in one file
# the study's row that twins_recipe.yaml gathers in one file (benchmarks/study.py fits it with these arguments)
RECIPE_RUN = "iterating_long_order_count_both_negatives_text_top2_lr1e-4_pool_mass_7epochs_shift_glimpses3"
EXPECTED_HEAD = {
    "single": SingleCascade,
    "stack": StackingCascade,
    "iter": IteratingCascade,
    "biencoder": type(None),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_random_clap_checkpoint(root / "630k-audioset-best.pt")
    save_tiny_text_model(root / "roberta-tiny")
    audiocaps = root / "audiocaps"
    audiocaps.mkdir()
    for split in ("train", "val", "test"):
        (audiocaps / f"{split}.csv").write_text(
            "audiocap_id,youtube_id,start_time,caption\n1,abc,30,a dog barks\n"
        )
    return root


def parse(tmp_path, args: list[str]) -> LacoatCLI:
    """LacoatCLI of these arguments (config paths relative to the repository), built but not run."""
    args = [str(REPO / a) if a.startswith("configs/") else a for a in args]
    return LacoatCLI(
        LacoatModule,
        RetrievalDataModule,
        args=[*args, f"--trainer.default_root_dir={tmp_path}"],
        run=False,
        auto_configure_optimizers=False,
    )


def build(tmp_path, configs, override):
    """Model and DataModule of ``configs`` (paths under configs/) plus an override, not run."""
    extra = tmp_path / "override.yaml"
    extra.write_text(override)
    args = [arg for c in configs for arg in ("--config", f"configs/{c}")]
    cli = parse(tmp_path, [*args, "--config", str(extra)])
    return cli.model, cli.datamodule


def test_configs_are_all_here():
    names = {f"{d}_{h}.yaml" for d in ("clotho", "audiocaps") for h in EXPECTED_HEAD} | {"demo.yaml"}
    assert names == set(CONFIGS)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "demo.yaml"])
def test_paper_config_builds_with_real_loading_paths(tmp_path, config, weights, synthcaps):
    root = synthcaps if config.startswith("clotho") else weights / "audiocaps"
    model, data = build(
        tmp_path,
        [config],
        f"""
model:
  matcher:
    init_args:
      audio_encoder:
        init_args: {{checkpoint: {weights / "630k-audioset-best.pt"}}}
      text_encoder:
        init_args: {{model_name: {weights / "roberta-tiny"}}}
data:
  source:
    init_args: {{root: {root}}}
""",
    )
    head = config.split("_")[1].removesuffix(".yaml")
    assert isinstance(model.matcher.cascade, EXPECTED_HEAD[head])
    assert model.matcher.audio_encoder.dim == 768 and model.matcher.text_encoder.dim == 32
    assert model.matcher.audio_encoder.sample_rate == data.train_loader.sample_rate == 48000
    if model.matcher.cascade is not None:
        assert model.matcher.cascade.dim == 512
    # the CLAP weights came from the checkpoint file
    state = torch.load(weights / "630k-audioset-best.pt", weights_only=True)["state_dict"]
    key = next(k for k in state if k.startswith("module.audio_branch.") and k.endswith("weight"))
    loaded = dict(model.matcher.audio_encoder.named_parameters())
    name = next(n for n in loaded if n.endswith(key.removeprefix("module.audio_branch.")))
    assert torch.equal(loaded[name].detach(), state[key])


@pytest.mark.parametrize("variant", [None, *(v for v in VARIANTS if v != RECIPE)])
def test_demo_config_and_variants_build(tmp_path, synthcaps, variant):
    refines = {"count_rewrites_all.yaml", "count_edits_both.yaml"}
    before = ["count_negatives_both.yaml"] if variant in refines else []  # the variant it refines
    configs = ["demo.yaml"] + [f"demo_variants/{v}" for v in [*before, variant] if v]
    model, data = build(tmp_path, configs, f"data:\n  source:\n    init_args: {{root: {synthcaps}}}\n")
    assert model.matcher.audio_encoder.sample_rate == data.train_loader.sample_rate == 16000
    expected = {
        None: IteratingCascade,
        "single.yaml": SingleCascade,
        "stack.yaml": StackingCascade,
        "augmented.yaml": IteratingCascade,
        "long.yaml": IteratingCascade,
        "order_negatives.yaml": IteratingCascade,
        "count_negatives.yaml": IteratingCascade,
        "count_negatives_both.yaml": IteratingCascade,
        "count_rewrites_all.yaml": IteratingCascade,
        "count_edits_both.yaml": IteratingCascade,
        "audio_tokens_160ms.yaml": IteratingCascade,
        "text_finetune.yaml": IteratingCascade,
        "text_finetune_top2.yaml": IteratingCascade,
        "pool_mass.yaml": IteratingCascade,
        "train_shift.yaml": IteratingCascade,
        "audio_glimpses.yaml": IteratingCascade,
    }
    assert isinstance(model.matcher.cascade, expected.get(variant, type(None)))
    assert data.train_loader.max_shift_seconds == (0.32 if variant == "train_shift.yaml" else 0.0)
    assert data.eval_loader.max_shift_seconds == 0.0
    assert model.matcher.audio_encoder.pool_frames == (8 if variant == "audio_tokens_160ms.yaml" else 16)
    assert (model.matcher.audio_pool.mass, model.matcher.text_pool.mass) == (
        variant == "pool_mass.yaml",
        False,
    )
    assert model.matcher.audio_pool.mlp[-1].out_features == (3 if variant == "audio_glimpses.yaml" else 1)
    assert model.objective.text_rewrites == {
        "order_negatives.yaml": ["order"],
        "count_negatives.yaml": ["count"],
        "count_negatives_both.yaml": ["count"],
        "count_rewrites_all.yaml": ["count"] * 4,
        "count_edits_both.yaml": ["count"],
    }.get(variant, [])
    assert model.objective.audio_edits == {
        "order_negatives.yaml": ["order"],
        "count_negatives_both.yaml": ["count"],
        "count_rewrites_all.yaml": ["count"],
        "count_edits_both.yaml": ["count"] * 2,
    }.get(variant, [])
    fine_tuned = variant in ("text_finetune.yaml", "text_finetune_top2.yaml")
    text_params = dict(model.matcher.text_encoder.named_parameters())
    trained = {name for name, p in text_params.items() if p.requires_grad}
    if variant == "text_finetune_top2.yaml":  # MiniLM's top 2 of 6 layers
        assert {name.split(".")[3] for name in trained} == {"4", "5"}
        assert all(name.startswith("model.encoder.layer.") for name in trained)
    else:
        assert trained == (set(text_params) if fine_tuned else set())
    assert model.text_encoder_lr == (3e-5 if fine_tuned else model.encoder_lr)


@pytest.mark.parametrize("head", [[], ["--config", "configs/demo_variants/biencoder.yaml"]])
def test_twins_recipe_is_the_studys_stack_of_variants(tmp_path, synthcaps, head):
    spec = importlib.util.spec_from_file_location("study", REPO / "benchmarks" / "study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)

    def config(*more):
        cli = parse(
            tmp_path,
            ["--config", "configs/demo.yaml", *head, *more, f"--data.source.init_args.root={synthcaps}"],
        )
        settings = cli.config.as_dict()
        settings.pop("config")  # the files it was read from
        return settings, cli.model

    recipe, model = config("--config", f"configs/demo_variants/{RECIPE}")
    stacked, _ = config(*study.RUNS[RECIPE_RUN])
    assert recipe == stacked
    assert recipe["trainer"]["max_epochs"] == 7 and recipe["data"]["train_shift_seconds"] == 0.32
    assert model.matcher.audio_pool.mass and model.matcher.audio_pool.mlp[-1].out_features == 3
    assert isinstance(model.matcher.cascade, IteratingCascade if not head else type(None))
