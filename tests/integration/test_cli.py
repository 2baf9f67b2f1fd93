import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lacoat.cli import TOOLS, main
from lacoat.cli.config import RUN_KEYS
from tests.conftest import REPO


def test_help_lists_every_subcommand_quickly():
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "lacoat", "--help"], capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - start
    assert len(TOOLS) >= 12
    for command in TOOLS:  # the registry main dispatches on
        assert f"\n  {command} " in out.stdout, command
    print(f"lacoat --help took {elapsed:.2f} s")  # the 2-s target is checked by hand and in the README


def test_help_imports_nothing_heavy():
    code = "import sys; from lacoat.cli import main; main(['--help']); print(sorted(m for m in ('torch', 'lightning', 'transformers', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_synth_then_inspect(tmp_path, capsys):
    out = tmp_path / "sc"
    main(["synth", "--out", str(out), "--n_development", "6", "--n_validation", "3", "--n_evaluation", "3"])
    assert (out / "clotho_captions_development.csv").is_file()
    config = tmp_path / "data.yaml"
    config.write_text(
        f"data:\n  source:\n    class_path: lacoat.data.Clotho\n    init_args:\n      root: '{out}'\n"
        "  num_workers: 0\n"
    )
    main(["inspect", "--config", str(config)])
    printed = capsys.readouterr().out
    assert "train  split 'development': 6 clips, 30 captions" in printed
    assert "test   split 'evaluation': 3 clips, 15 caption queries, 0 skipped" in printed


def test_data_error_is_one_clear_message(tmp_path, capsys):
    config = tmp_path / "data.yaml"
    config.write_text(
        f"data:\n  source:\n    class_path: lacoat.data.Clotho\n    init_args:\n      root: '{tmp_path}/none'\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lacoat inspect: error: no Clotho data found under") and "Traceback" not in err


def test_bad_value_in_config_is_named(tmp_path, capsys):
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  source:\n    class_path: lacoat.data.CaptionCsv\n    init_args:\n      audio_dir: x\n"
        "  on_bad_audio: ignore\n"
    )
    with pytest.raises(SystemExit):
        main(["inspect", "--config", str(config)])
    err = capsys.readouterr().err
    assert "on_bad_audio" in err and "Traceback" not in err


def test_unknown_command_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    main(["--version"])
    assert capsys.readouterr().out.startswith("lacoat 0.")


def test_run_keys_are_those_of_a_fit_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert set(printed) == set(RUN_KEYS), "config.RUN_KEYS must list what a tool accepts and ignores"


@pytest.fixture(scope="module")
def augmented_demo_dir(tmp_path_factory, synthcaps) -> Path:
    """A working directory holding the paraphrases configs/demo/data/augmented.yaml names."""
    work = tmp_path_factory.mktemp("work")
    out = work / "data" / "synthcaps_aug" / "rules.csv"
    captions = synthcaps / "clotho_captions_development.csv"
    main(
        [
            "augment",
            "--backend",
            "rules",
            "--n",
            "1",
            "--input",
            str(captions),
            "--output",
            str(out),
            "--no_progress",
        ]
    )
    return work


DEMO_WITH_VARIANT = [
    "--config",
    str(REPO / "configs" / "demo.yaml"),
    "--config",
    str(REPO / "configs" / "demo" / "data" / "augmented.yaml"),
]


def test_inspect_merges_configs_and_takes_overrides(augmented_demo_dir, synthcaps, capsys, monkeypatch):
    monkeypatch.chdir(augmented_demo_dir)  # the variant's paraphrases: data/synthcaps_aug/rules.csv
    main(["inspect", *DEMO_WITH_VARIANT, "--data.source.root", str(synthcaps), "--stages", "[train]"])
    printed = capsys.readouterr().out
    assert f"source: Clotho(root='{synthcaps}')" in printed  # the override, not demo.yaml's root
    match = re.search(r"train  split 'development': 40 clips, 200 captions, (\d+) augmented", printed)
    assert match and int(match.group(1)) == 100, printed  # half the 200 paraphrases: the variant's ratio 0.5


def test_extract_merges_configs_and_takes_overrides(augmented_demo_dir, synthcaps, capsys, monkeypatch):
    from tests.helpers import minilm_dir

    monkeypatch.chdir(augmented_demo_dir)
    cache = augmented_demo_dir / "cache"
    text_model = "--model.matcher.init_args.text_encoder.init_args.model_name"
    overrides = [
        "--data.source.root",
        str(synthcaps),
        "--data.feature_cache",
        str(cache),
        text_model,
        str(minilm_dir()),
    ]
    main(["extract", *DEMO_WITH_VARIANT, *overrides, "--stages", "[test]"])
    printed = capsys.readouterr().out
    assert re.search(r"audio evaluation +10 items: 10 encoded", printed), printed  # both encoders frozen
    assert re.search(r"text +evaluation +50 items: 50 encoded", printed), printed
    assert f"features in {cache}" in printed and list(cache.rglob("shard-*.pt"))


def test_extract_leaves_out_a_trained_encoder(synthcaps, tmp_path, capsys):
    from tests.helpers import minilm_dir

    cache = tmp_path / "cache"
    main(
        [
            "extract",
            "--config",
            str(REPO / "configs" / "demo_scratch.yaml"),
            "--data.source.root",
            str(synthcaps),
        ]
        + ["--data.feature_cache", str(cache), "--stages", "[test]"]
        + ["--model.matcher.init_args.text_encoder.init_args.model_name", str(minilm_dir())]
    )
    printed = capsys.readouterr().out
    assert "audio encoder is trained (frozen: false): its outputs are not cached" in printed
    assert re.search(r"text +evaluation +\d+ items: \d+ encoded", printed), printed


def test_tool_option_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--config", str(REPO / "configs" / "demo.yaml"), "--data.on_bad_audio", "ignore"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lacoat inspect: error: invalid config or option:") and "on_bad_audio" in err
    assert err.count("\n") == 1, err
