import subprocess
import sys
import time

import pytest

from lacoat.cli import main


def test_help_lists_every_subcommand_quickly():
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "lacoat", "--help"], capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - start
    for command in ("fit", "validate", "test", "predict", "synth", "inspect"):
        assert f"\n  {command} " in out.stdout
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
        "  sample_rate: 16000\n  num_workers: 0\n"
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
