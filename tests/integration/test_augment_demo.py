"""The demo variant with rule-based augmentation: config + `lacoat augment --backend rules` output."""

import pandas as pd

from lacoat.cli import main
from lacoat.models.cascade import IteratingCascade
from tests.integration.test_configs import build


def test_augmented_demo_variant_trains_on_rules_paraphrases(tmp_path, synthcaps, capsys):
    aug = tmp_path / "synthcaps_aug" / "rules.csv"
    source = synthcaps / "clotho_captions_development.csv"
    main(
        [
            "augment",
            "--backend",
            "rules",
            "--n",
            "2",
            "--input",
            str(source),
            "--output",
            str(aug),
            "--no_progress",
        ]
    )
    assert "200 captions" in capsys.readouterr().out  # 5 of each of the 40 clips
    written = pd.read_csv(aug, dtype=str, keep_default_na=False)
    override = f"data:\n  source:\n    init_args: {{root: {synthcaps}}}\n  augmented_captions: {aug}\n"
    model, data = build(tmp_path, ["demo.yaml", "demo/data/augmented.yaml"], override)
    assert isinstance(model.matcher.cascade, IteratingCascade)  # the demo's model, unchanged
    assert data.augmented_ratio == 0.5
    data.setup("fit")
    added = data.train_table[data.train_table["source"] == "augmented"]
    assert len(added) == round(0.5 * len(written)) and len(data.train_table) == 200 + len(added)
    assert set(added["caption"]) <= set(written["caption"])
