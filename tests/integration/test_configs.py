"""Every config in configs/ parses (most tests stop there) and builds its model through LacoatCLI.

configs/ holds whole runs (the demo, the eight paper configs), the fragments the paper configs are made
of (configs/{trainer,data,model}/), the demo's variants by axis (configs/demo/<axis>/, one more
``--config`` after demo.yaml each) and recipes of several axes (configs/demo/recipes/). Where a model is
built, the real encoders get tiny random weights saved the way downloads are (a CLAP checkpoint file, a
transformers folder) and are loaded through the same path; data roots point at generated data.
"""

import importlib.util
import itertools

import pytest
import torch
import yaml

from lacoat.cli import main
from lacoat.cli.config import sections_parser
from lacoat.cli.lightning import LacoatCLI
from lacoat.data.datamodule import RetrievalDataModule
from lacoat.models.cascade import IteratingCascade, SingleCascade, StackingCascade
from lacoat.models.encoders import AisfxAudioEncoder, LogMelAudioEncoder
from lacoat.train.module import LacoatModule
from tests.conftest import REPO
from tests.helpers import save_random_clap_checkpoint, save_tiny_text_model

CONFIGS = REPO / "configs"
EXPECTED_HEAD = {
    "single": SingleCascade,
    "stack": StackingCascade,
    "iter": IteratingCascade,
    "biencoder": type(None),
    "towers": type(None),  # a bi-encoder of the cascade's depth: Towers, no cascade
}
# each paper config is a whole file, equal to this stack of fragments (test_paper_config_is_its_fragments)
PAPER = {
    f"{data}_{head}.yaml": [
        "trainer/paper.yaml",
        f"data/{data}.yaml",
        "model/clap_roberta.yaml",
        f"model/{head}.yaml",
    ]
    for data in ("clotho", "audiocaps")
    for head in EXPECTED_HEAD
}
DATA_FRAGMENTS = sorted(str(p.relative_to(CONFIGS)) for p in (CONFIGS / "data").glob("*.yaml"))
# what a demo variant of each axis may set (dotted keys, and all below them): nothing else, so that
# variants of different axes stack in any order to the same run
AXES = {
    "budget": ("trainer.max_epochs", "trainer.max_steps"),
    "negatives": ("model.objective",),
    "text": ("model.matcher.init_args.text_encoder", "model.text_encoder_lr"),
    "head": (
        "model.matcher.init_args.cascade",
        "model.matcher.init_args.d_model",
        "model.matcher.init_args.towers",
    ),
    "pool": (
        "model.matcher.init_args.pool_mass",
        "model.matcher.init_args.audio_glimpses",
        "model.matcher.init_args.audio_encoder",
    ),
    "data": ("data",),
}
VARIANTS = sorted(
    str(p.relative_to(CONFIGS)) for axis in AXES for p in (CONFIGS / "demo" / axis).glob("*.yaml")
)
# the two regimes' bases: frozen encoders read from the feature cache (make demo), and from scratch
BASES = ["demo.yaml", "demo_scratch.yaml"]
SCRATCH_ONLY = {"demo/pool/audio_tokens_160ms.yaml"}  # a LogMel setting: the frozen base has no LogMel
RECIPES = sorted(str(p.relative_to(CONFIGS)) for p in (CONFIGS / "demo" / "recipes").glob("*.yaml"))
RECIPE = "demo/recipes/twins.yaml"  # the study's final recipe: variants of several axes in one file
# the study's row that the twins recipe gathers in one file (benchmarks/study.py fits it with these arguments)
RECIPE_RUN = "iterating_long_order_count_both_negatives_text_top2_lr1e-4_pool_mass_7epochs_shift_glimpses3"


def axis_of(variant: str) -> str:
    return variant.split("/")[1]


def stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".yaml")


class ParseOnly(LacoatCLI):
    """LacoatCLI that parses (and names the run folder, ``before_instantiate_classes``) but builds and
    runs nothing."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def configs_args(configs: list[str]) -> list[str]:
    return [arg for c in configs for arg in ("--config", str(CONFIGS / c))]


def parse_only(args: list[str], subcommand: str | None = None):
    """The config LacoatCLI makes of ``args`` (``subcommand``'s, if given), nothing built."""
    cli = ParseOnly(
        LacoatModule,
        RetrievalDataModule,
        args=[subcommand, *args] if subcommand else args,
        run=subcommand is not None,
        auto_configure_optimizers=False,
    )
    return cli.config[subcommand] if subcommand else cli.config


@pytest.fixture(scope="module")
def parser():
    """LacoatCLI's parser (``fit``'s arguments), made once: parsing with it is quick."""
    return ParseOnly(
        LacoatModule,
        RetrievalDataModule,
        args=configs_args(["demo.yaml"]),
        run=False,
        auto_configure_optimizers=False,
    ).parser


def settings(parser, configs: list[str], *more: str) -> dict:
    """What the stack ``configs`` (paths under configs/) and ``more`` set: the parsed config as a dict,
    without the list of files read and without the run folder (which the stack names)."""
    parsed = parser.parse_args([*configs_args(configs), *more]).as_dict()
    parsed.pop("config")
    parsed["trainer"].pop("default_root_dir")
    return parsed


def leaves(tree, prefix: str = "") -> dict[str, object]:
    """A nested dict's values by dotted key (a list counts as one value)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, value in tree.items() for k, v in leaves(value, f"{prefix}{key}.").items()}


def differences(a: dict, b: dict) -> set[str]:
    """The dotted keys whose values differ between two nested dicts (or that one of them lacks)."""
    a, b = leaves(a), leaves(b)
    return {key.removesuffix(".") for key in set(a) | set(b) if a.get(key, "<none>") != b.get(key, "<none>")}


def within(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def names_a_run_folder(config: str) -> bool:
    """Whether a file under configs/ sets ``trainer.default_root_dir``."""
    return "default_root_dir" in (yaml.safe_load((CONFIGS / config).read_text()).get("trainer") or {})


# ---- configs/ holds what these tests parse, and nothing else ------------------------------------
def test_every_config_file_is_parsed_by_a_test():
    everything = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*") if p.is_file()}
    parsed = {*BASES, *PAPER, *DATA_FRAGMENTS, *VARIANTS, *RECIPES} | {
        fragment for stack in PAPER.values() for fragment in stack
    }
    assert everything == parsed, "a config no test parses (or a test of a missing one)"
    assert all(name.endswith(".yaml") for name in everything)
    assert set(AXES) | {"recipes"} == {p.name for p in (CONFIGS / "demo").iterdir()}


def test_demo_variant_names_are_unique():
    """A stack's run folder and W&B run are named from the files' stems: a stem must say which file."""
    stems = [stem(v) for v in [*VARIANTS, *RECIPES]] + ["demo"]
    assert len(stems) == len(set(stems))


# ---- paper configs: whole files, each its stack of fragments ------------------------------------
@pytest.mark.parametrize("config", sorted(PAPER))
def test_paper_config_is_its_fragments(parser, config):
    whole = settings(parser, [config])
    stacked = settings(parser, PAPER[config])
    assert whole == stacked, f"{config} differs from its fragments at {sorted(differences(whole, stacked))}"
    own = yaml.safe_load((CONFIGS / config).read_text())["trainer"]["default_root_dir"]
    assert own == f"runs/{stem(config)}"


@pytest.mark.parametrize("fragment", DATA_FRAGMENTS)
def test_data_fragment_parses_alone_as_lacoat_inspect_reads_it(fragment):
    parser = sections_parser("lacoat inspect", "", {"data": RetrievalDataModule})
    cfg = parser.parse_args(["--config", str(CONFIGS / fragment)])
    assert cfg.data.source.init_args.root == f"data/{stem(fragment)}"
    assert cfg.model is None and cfg.trainer is None  # a data section alone


def test_print_config_prints_a_paper_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "clotho_iter.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["default_root_dir"] == "runs/clotho_iter"
    assert printed["model"]["matcher"]["init_args"]["cascade"]["class_path"].endswith("IteratingCascade")
    assert printed["model"]["objective"]["init_args"]["loss"]["init_args"]["aux_weight"] == 0.5
    assert printed["data"]["source"]["init_args"]["root"] == "data/clotho"
    assert "sample_rate" not in printed["data"]  # linked to the audio encoder's: no setting of its own


# ---- demo variants: each sets its own axis only, so variants of different axes commute ----------
def on_bases(variants: list[str]) -> list[tuple[str, str]]:
    """(base, variant) for every base a variant applies to."""
    return [(b, v) for b in BASES for v in variants if b == "demo_scratch.yaml" or v not in SCRATCH_ONLY]


@pytest.mark.parametrize(("base", "variant"), on_bases(VARIANTS))
def test_demo_variant_sets_only_its_axis(parser, base, variant):
    changed = differences(settings(parser, [base]), settings(parser, [base, variant]))
    assert changed, f"{variant} changes nothing"
    outside = {key for key in changed if not within(key, AXES[axis_of(variant)])}
    assert not outside, f"{variant} sets {sorted(outside)}, outside its axis '{axis_of(variant)}'"
    assert not names_a_run_folder(variant), f"{variant} names a run folder: the stack names it"


@pytest.mark.parametrize(
    ("base", "first", "second"),
    [
        (base, a, b)
        for base in BASES
        for a, b in itertools.combinations(VARIANTS, 2)
        if axis_of(a) != axis_of(b) and (base == "demo_scratch.yaml" or not {a, b} & SCRATCH_ONLY)
    ],
)
def test_demo_variants_of_different_axes_commute(parser, base, first, second):
    one_way = settings(parser, [base, first, second])
    other_way = settings(parser, [base, second, first])
    assert one_way == other_way, f"they differ at {sorted(differences(one_way, other_way))}"


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("head", [None, "demo/head/biencoder.yaml"])
def test_demo_recipe_parses_after_a_head(parser, recipe, head):
    base = "demo_scratch.yaml"  # the recipes are the from-scratch study's
    alone, recipe_set = settings(parser, [base]), settings(parser, [base, recipe])
    assert differences(alone, recipe_set) and not names_a_run_folder(recipe)
    if head:  # the head variant still decides the head
        with_head = settings(parser, [base, head, recipe])
        assert differences(recipe_set, with_head) == differences(alone, settings(parser, [base, head]))


# ---- run folders: named from the stack ----------------------------------------------------------
def root_of(configs: list[str], *more: str, subcommand: str = "fit") -> str:
    return parse_only([*configs_args(configs), *more], subcommand).trainer.default_root_dir


@pytest.mark.parametrize("config", [*BASES, *sorted(PAPER)])
def test_a_config_alone_keeps_its_run_folder(config):
    assert root_of([config]) == f"runs/{stem(config)}"


@pytest.mark.parametrize(
    ("stack", "folder"),
    [
        (["demo.yaml", "demo/budget/long.yaml"], "runs/demo+long"),
        (
            ["demo.yaml", "demo/budget/long.yaml", "demo/negatives/order_negatives.yaml"],
            "runs/demo+long+order_negatives",
        ),
        (["demo_scratch.yaml", "demo/head/biencoder.yaml", RECIPE], "runs/demo_scratch+biencoder+twins"),
        (["demo.yaml", "demo/head/towers.yaml"], "runs/demo+towers"),
        (PAPER["clotho_iter.yaml"], "runs/paper+clotho+clap_roberta+iter"),  # the base names none
    ],
)
def test_a_stack_names_its_run_folder_and_test_finds_the_same(stack, folder):
    assert root_of(stack) == folder
    assert root_of(stack, subcommand="test") == folder  # where `lacoat test` looks for the best checkpoint


def test_different_stacks_write_to_different_run_folders():
    stacks = [
        ["demo.yaml"],
        ["demo.yaml", "demo/budget/long.yaml"],
        ["demo.yaml", "demo/budget/long.yaml", "demo/negatives/order_negatives.yaml"],
        ["demo.yaml", "demo/negatives/order_negatives.yaml"],
        ["demo.yaml", "demo/head/single.yaml"],
        ["demo_scratch.yaml"],
        ["demo_scratch.yaml", "demo/head/single.yaml"],
        ["demo_scratch.yaml", RECIPE],
    ]
    folders = [root_of(stack) for stack in stacks]
    assert len(set(folders)) == len(stacks), folders


def test_a_run_folder_given_on_the_command_line_wins(tmp_path):
    stack = ["demo.yaml", "demo/budget/long.yaml"]
    assert root_of(stack, f"--trainer.default_root_dir={tmp_path}") == str(tmp_path)
    assert root_of(stack, f"--trainer.default_root_dir={tmp_path}", subcommand="test") == str(tmp_path)
    assert root_of(["demo.yaml"], f"--trainer.default_root_dir={tmp_path}") == str(tmp_path)


def test_the_run_folder_names_the_logs_folder():
    config = parse_only(configs_args(["demo.yaml", "demo/budget/long.yaml"]))
    assert config.trainer.logger.init_args.save_dir == "runs/demo+long"  # logs go where the checkpoints go


# ---- builds (tiny random weights) ---------------------------------------------------------------
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


def test_top_level_configs_are_the_demo_and_the_paper_configs():
    names = {f"{d}_{h}.yaml" for d in ("clotho", "audiocaps") for h in EXPECTED_HEAD} | set(BASES)
    assert names == {p.name for p in CONFIGS.glob("*.yaml")} == set(PAPER) | set(BASES)


@pytest.mark.parametrize("config", sorted(PAPER))
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
    assert model.objective.loss.aux_weight == (0.0 if head in ("biencoder", "towers") else 0.5)
    assert (model.matcher.towers is not None) == (head == "towers")
    if model.matcher.cascade is not None or model.matcher.towers is not None:  # the same width
        assert (model.matcher.cascade or model.matcher.towers).dim == 512
    # the CLAP weights came from the checkpoint file
    state = torch.load(weights / "630k-audioset-best.pt", weights_only=True)["state_dict"]
    key = next(k for k in state if k.startswith("module.audio_branch.") and k.endswith("weight"))
    loaded = dict(model.matcher.audio_encoder.named_parameters())
    name = next(n for n in loaded if n.endswith(key.removeprefix("module.audio_branch.")))
    assert torch.equal(loaded[name].detach(), state[key])


@pytest.mark.parametrize(("base", "variant"), [(b, None) for b in BASES] + on_bases(VARIANTS))
def test_demo_config_and_variants_build(tmp_path, synthcaps, base, variant):
    configs = [base] + ([variant] if variant else [])
    model, data = build(tmp_path, configs, f"data:\n  source:\n    init_args: {{root: {synthcaps}}}\n")
    name = stem(variant) if variant else None
    scratch = base == "demo_scratch.yaml"  # a log-mel encoder trained with the head, no feature cache
    encoder = model.matcher.audio_encoder
    assert type(encoder) is (LogMelAudioEncoder if scratch else AisfxAudioEncoder)
    assert encoder.sample_rate == data.train_loader.sample_rate == (16000 if scratch else 44100)
    assert encoder.frozen != scratch and (data.feature_cache is None) == scratch
    assert model.encoder_lr == (1e-3 if scratch else 1e-5)
    if scratch:
        assert encoder.pool_frames == (8 if name == "audio_tokens_160ms" else 16)
    if model.matcher.cascade is not None:  # head variants keep the base's width and dropout
        assert model.matcher.cascade.dim == 128
        dropouts = {m.p for m in model.matcher.cascade.modules() if isinstance(m, torch.nn.Dropout)}
        assert dropouts == {0.1 if scratch else 0.0}
    expected = {
        "single": SingleCascade,
        "stack": StackingCascade,
        "biencoder": type(None),
        "towers": type(None),
    }
    assert isinstance(model.matcher.cascade, expected.get(name, IteratingCascade))
    assert (model.matcher.towers is not None) == (name in ("towers", "towers_iter"))
    assert data.train_loader.max_shift_seconds == (0.32 if name == "train_shift" else 0.0)
    assert data.eval_loader.max_shift_seconds == 0.0
    assert (model.matcher.audio_pool.mass, model.matcher.text_pool.mass) == (name == "pool_mass", False)
    assert model.matcher.audio_pool.mlp[-1].out_features == (3 if name == "audio_glimpses" else 1)
    assert (model.objective.pairs, model.objective.hard_negatives) == ("hard_negatives", 3)
    assert model.objective.text_rewrites == {
        "order_negatives": ["order"],
        "count_negatives": ["count"],
        "count_negatives_both": ["count"],
        "count_rewrites_all": ["count"] * 4,
        "count_edits_both": ["count"],
    }.get(name, [])
    assert model.objective.audio_edits == {
        "order_negatives": ["order"],
        "count_negatives_both": ["count"],
        "count_rewrites_all": ["count"],
        "count_edits_both": ["count"] * 2,
    }.get(name, [])
    fine_tuned = name in ("text_finetune", "text_finetune_top2")
    text_params = dict(model.matcher.text_encoder.named_parameters())
    trained = {n for n, p in text_params.items() if p.requires_grad}
    if name == "text_finetune_top2":  # MiniLM's top 2 of 6 layers
        assert {n.split(".")[3] for n in trained} == {"4", "5"}
        assert all(n.startswith("model.encoder.layer.") for n in trained)
    else:
        assert trained == (set(text_params) if fine_tuned else set())
    assert model.text_encoder_lr == (3e-5 if fine_tuned else model.encoder_lr)


def load_study():
    spec = importlib.util.spec_from_file_location("study", REPO / "benchmarks" / "study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_every_option_of_the_study_parses(parser, monkeypatch):
    """benchmarks/study.py fits each row: its regime's base config, then ``--config FILE`` and
    ``--key value`` pairs (from the repository); each pair a row uses parses after its base."""
    monkeypatch.chdir(REPO)
    rows = load_study().RUNS.values()
    assert all(len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]) for args in rows)
    bases = {f"configs/{b}" for b in BASES}
    assert all(args[0] == "--config" and args[1] in bases for args in rows)
    pairs = {(args[1], *args[i : i + 2]) for args in rows for i in range(2, len(args), 2)}
    for base, *pair in sorted(pairs):
        assert parser.parse_args(["--config", base, *pair]), (base, pair)


@pytest.mark.parametrize("head", [[], ["--config", "configs/demo/head/biencoder.yaml"]])
def test_twins_recipe_is_the_studys_stack_of_variants(tmp_path, synthcaps, head):
    study = load_study()

    base, *row = study.RUNS[RECIPE_RUN]  # the from-scratch base first

    def config(*more):
        cli = parse(tmp_path, [*more, f"--data.source.init_args.root={synthcaps}"])
        settings = cli.config.as_dict()
        settings.pop("config")  # the files it was read from
        return settings, cli.model

    assert (base, row[0]) == ("--config", "configs/demo_scratch.yaml")
    recipe, model = config(base, row[0], *head, "--config", f"configs/{RECIPE}")
    stacked, _ = config(base, row[0], *head, *row[1:])
    assert recipe == stacked
    assert recipe["trainer"]["max_epochs"] == 7 and recipe["data"]["train_shift_seconds"] == 0.32
    assert model.matcher.audio_pool.mass and model.matcher.audio_pool.mlp[-1].out_features == 3
    assert model.objective.text_rewrites == ["order", "count"] and model.objective.audio_edits == [
        "order",
        "count",
    ]
    assert isinstance(model.matcher.cascade, IteratingCascade if not head else type(None))
