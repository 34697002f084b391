"""Tests of cove.recommended: the settings a model folder carries, and how they ship."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from cove import CoveConfig, load_pipeline
from cove.config import Extras, config_from_overrides, overrides_of
from cove.loading import TINY_PATH
from cove.recommended import (PAPER, SETTINGS_FILE, model_folder, negative_prompt, read_settings,
                              recommended_config, write_settings)
from cove.tiny import presets


def test_overrides_round_trip_through_flat_keys():
    config = CoveConfig(k=5, feature_layer="up_blocks.0", extras=Extras(strength=0.5, pnp_resnet_max_t=300))
    config = replace(config, engine=replace(config.engine, pnp_resnets=("up_blocks.1.resnets.0",)))
    flat = overrides_of(config)
    assert flat == {"k": 5, "feature_layer": "up_blocks.0", "extras.strength": 0.5, "extras.pnp_resnet_max_t": 300,
                    "engine.pnp_resnets": ["up_blocks.1.resnets.0"]}  # a tuple as JSON writes it
    assert config_from_overrides(json.loads(json.dumps(flat))) == config
    assert overrides_of(CoveConfig()) == {} and config_from_overrides({}) == CoveConfig()
    base = CoveConfig(k=5)
    assert config_from_overrides(overrides_of(CoveConfig(k=1), base), base) == CoveConfig(k=1)
    for key in ("extras.colour", "engine", "extra.strength", "feature"):
        with pytest.raises(ValueError, match=f"unknown setting '{key}'"):
            config_from_overrides({key: 1})
    with pytest.raises(ValueError, match="strength must lie in"):
        config_from_overrides({"extras.strength": 2.0})


def test_a_folder_carries_its_settings_and_a_loaded_pipeline_finds_them(tiny_folder):
    assert read_settings(tiny_folder) == read_settings("org/some-model")  # no file: the paper's
    paper = read_settings(tiny_folder)
    assert paper.config == CoveConfig() and paper.negative == "empty" and paper.chosen_by == PAPER
    assert paper.path is None and model_folder("org/some-model") is None
    config = CoveConfig(feature_t=50, feature_layer="up_blocks.1", extras=Extras(strength=0.5))
    path = write_settings(tiny_folder, config, "source", "measured by a test")
    assert path == tiny_folder / SETTINGS_FILE
    settings = read_settings(str(tiny_folder))
    assert (settings.config, settings.negative, settings.chosen_by, settings.path) == \
        (config, "source", "measured by a test", path)
    pipe = load_pipeline(tiny_folder)
    assert model_folder(pipe) == tiny_folder and read_settings(pipe) == settings
    assert recommended_config(pipe, k=1) == replace(config, k=1)
    assert negative_prompt("a red star", settings.negative) == "a red star"
    assert negative_prompt("a red star", "empty") == ""
    path.write_text(json.dumps({"config": {"feature_t": 25}}))  # rewritten: read again, not cached
    assert read_settings(tiny_folder).config == CoveConfig(feature_t=25) and read_settings(tiny_folder).negative == "empty"


@pytest.mark.parametrize("text, message", [
    ("{not json", "Expecting property name"),
    ('["config"]', "expected {\"config\""),
    ('{"config": {"windw": 9}}', "unknown setting 'windw'"),
    ('{"config": {"k": 0}}', "k must be >= 1"),
    ('{"config": {}, "negative": "target"}', "negative: expected one of source, empty"),
    ('{"config": {}, "extra": 1}', "unknown keys \\['extra'\\]"),
])
def test_a_bad_settings_file_is_a_one_line_error_naming_it(tiny_folder, text, message):
    (tiny_folder / SETTINGS_FILE).write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_settings(tiny_folder)
    assert str(error.value).startswith(str(tiny_folder / SETTINGS_FILE)) and "\n" not in str(error.value)


def test_write_settings_refuses_what_it_cannot_write(tiny_folder, tmp_path):
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        write_settings(tmp_path, CoveConfig(), "empty", "")
    with pytest.raises(ValueError, match="negative: expected one of"):
        write_settings(tiny_folder, CoveConfig(), "both", "")
    assert not (tiny_folder / SETTINGS_FILE).exists() and not (tmp_path / SETTINGS_FILE).exists()


def test_cove_tiny_ships_its_settings_with_its_weights(monkeypatch, tmp_path):
    """edit_config and the negative-prompt policy are the weights folder's file: a model ships
    with the settings measured on it."""
    settings = read_settings("cove-tiny")
    assert settings.path == TINY_PATH / SETTINGS_FILE and settings.chosen_by
    assert presets.edit_config() == settings.config == recommended_config("cove-tiny")
    assert presets.edit_negative() == settings.negative
    assert presets.edit_config(k=1) == replace(settings.config, k=1)
    monkeypatch.setattr("cove.loading.TINY_PATH", tmp_path)
    with pytest.raises(FileNotFoundError, match="cove-tiny's settings are missing"):
        presets.edit_config()


def test_the_shipped_settings_are_those_the_docs_quote():
    """docs/method/tiny.md and edit_config's docstring describe these; a new model's settings
    change them together."""
    settings = read_settings("cove-tiny")
    config = presets.edit_config()
    assert (config.inversion_steps, config.denoise_steps, config.pnp_steps, config.guidance_scale) == (50, 25, 12, 3.0)
    assert (config.feature_layer, config.feature_t, config.extras.strength, config.extras.p2p_steps) == \
        ("up_blocks.0", 50, 0.8, 25)
    assert config.extras.pnp_resnet_max_t == 300
    from cove.pipeline import denoise_timesteps
    steps = denoise_timesteps(load_pipeline("cove-tiny"), config)  # PnP's steps end above t = 300: no ResNet
    assert len(steps) == 20 and (steps[0], steps[config.pnp_steps - 1]) == (761, 321)
    assert settings.negative == "empty"
    assert (config.extras.mask_threshold, config.extras.mask_dilate, config.extras.mask_fill_holes) == (0.4, 1, True)
    assert settings.describe().endswith("an edit mask at threshold 0.4 grown by 1 cell, its holes filled, "
                                        "correspondence from up_blocks.0 at t = 50")


@pytest.mark.parametrize("record", ["edit_settings.json", "edit_settings_cove_tiny_a.json"])
def test_the_edit_settings_records_name_the_candidates_of_the_code(record):
    """Every candidate a record of ``python -m cove.tiny.settings`` names is, in the code, the
    settings it measured (the features it chose included), so a name means one thing in the
    docs, the records and ``--settings`` ("edit_config", the model's settings of the day, is
    recorded only when no other candidate holds them); the shipped record's choice is
    cove-tiny's settings."""
    from cove.tiny import settings

    result = json.loads((Path(__file__).resolve().parents[1] / "docs" / record).read_text())
    base = settings._base(result["features"])
    for name, row in result["candidates"].items():
        assert settings.candidate_config(settings.CANDIDATES[name], base).to_dict() == row["config"], name
        assert settings.candidate_negative(settings.CANDIDATES[name]) == row["negative"], name
    if record == "edit_settings.json":
        chosen = result["candidates"][result["verdict"]["chosen"]]
        assert presets.edit_config().to_dict() == chosen["config"] and presets.edit_negative() == chosen["negative"]
        assert settings.distinct(("edit_config", result["verdict"]["chosen"])) == (result["verdict"]["chosen"],)
        assert settings.distinct(("edit_config", "strength 0.5 set")) == ("edit_config", "strength 0.5 set")


def test_settings_describe_themselves_in_words():
    """``ModelSettings.describe``: steps run, PnP and the word swap counted in steps run."""
    late = CoveConfig(inversion_steps=50, denoise_steps=25, pnp_steps=12, guidance_scale=3.0, feature_t=50,
                      feature_layer="up_blocks.0", extras=Extras(strength=0.8, pnp_resnet_max_t=300, p2p_steps=25))
    assert replace(read_settings("cove-tiny"), config=late, negative="empty").describe() == (
        "50 inversion steps, the last 20 of 25 denoising steps (strength 0.8), PnP injection in the first 12 of "
        "them (its ResNet features only below t = 300), prompt-to-prompt's word swap in every step, guidance 3 "
        "against the empty prompt, no edit mask, correspondence from up_blocks.0 at t = 50")
    early = replace(late, pnp_steps=25, extras=Extras(strength=0.5, p2p_steps=3, mask_threshold=0.4))
    text = replace(read_settings("cove-tiny"), config=early, negative="source").describe()
    assert "the last 12 of 25 denoising steps (strength 0.5), PnP injection in every step, prompt-to-prompt's " \
           "word swap in the first 3 steps, guidance 3 against the source prompt, an edit mask at threshold 0.4 " \
           "grown by 1 cell, correspondence" in text
    unfilled = replace(early, extras=replace(early.extras, mask_dilate=0, mask_fill_holes=True))
    assert "an edit mask at threshold 0.4, not grown, its holes filled, correspondence" in \
        replace(read_settings("cove-tiny"), config=unfilled).describe()
    paper = CoveConfig()
    assert replace(read_settings("cove-tiny"), config=replace(paper, pnp_steps=0)).describe().startswith(
        f"{paper.inversion_steps} inversion steps, {paper.denoise_steps} denoising steps, no PnP injection, no word swap")


def test_the_settings_command_lists_its_candidates_in_words(capsys):
    """``python -m cove.tiny.settings --list`` loads no model: each candidate's name, then its
    settings in words, so a user picks a ``--settings`` or ``--only`` name knowing what it runs."""
    from cove.tiny import settings

    assert settings.main(["--list"]) == 0
    out = capsys.readouterr().out
    blocks = dict(block.split(":\n  ") for block in out.strip().split("\n\n"))
    assert list(blocks) == list(settings.CANDIDATES)
    assert blocks["edit_config"] == read_settings("cove-tiny").describe()
    assert "(strength 0.5)" in blocks["strength 0.5 set"] and "against the source prompt" in blocks["strength 0.5 set"]
    assert "no PnP injection" in blocks["strength 0.8 set, no PnP"]
    assert "an edit mask at threshold 0.4" in blocks["strength 0.8 set, edit mask"]


def test_the_settings_table_the_docs_quote_is_the_record():
    """tiny.md's table of candidates, and the figures it quotes for the mask, are
    docs/edit_settings.json's, judged by today's static rule."""
    from cove import metrics

    root = Path(__file__).resolve().parents[1]
    result = json.loads((root / "docs" / "edit_settings.json").read_text())
    assert result["static_rule"] == metrics.MOTION_FOLLOWING_RULE
    text = (root / "docs" / "method" / "tiny.md").read_text()
    chosen = result["verdict"]["chosen"]
    for name, row in result["candidates"].items():
        shown = f"**{name}**" if name == chosen else name
        assert (f"| {shown} | {row['landed']:.0%} ({row['worst_landed']:.0%}) | {row['landed_edits']:.0%} | "
                f"{row['warp_to_truth']:.2f} ({row['worst_warp_to_truth']:.1f}) | {row['fixed_edits']} / "
                f"{row['faint_edits']} |") in text, name
    words = " ".join(text.split())
    mask, plain = (result["candidates"][n] for n in (chosen, "strength 0.8 set, PnP for 12 steps"))
    edits = mask["edits"]
    at = {name: edits.index(name) for name in ("colour: red circle -> purple circle", "background: on grass -> on sand")}
    circle, sand = (mask["per_edit"][i] for i in at.values())
    assert (f"(1.01× the true change, {plain['per_edit'][at['colour: red circle -> purple circle']]['change_to_truth']:.2f}× "
            f"without the mask) and its flicker falls from "
            f"{plain['per_edit'][at['colour: red circle -> purple circle']]['warp_to_truth']:.2f}× the true edit's to "
            f"{circle['warp_to_truth']:.2f}×") in words and f"{circle['change_to_truth']:.2f}" == "1.01"
    assert f"grass → sand flickers {sand['warp_to_truth']:.1f}× the true edit's" in words
    assert f"PSNR against the true edit from {plain['psnr']:.1f} to {mask['psnr']:.1f} dB" in words
    assert f"the median from {plain['warp_to_truth']:.2f}× to {mask['warp_to_truth']:.2f}×" in words
