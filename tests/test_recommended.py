"""Tests of cove.recommended: the settings a model folder carries, and how they ship."""
import json
from dataclasses import replace

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
    assert (config.inversion_steps, config.denoise_steps, config.pnp_steps, config.guidance_scale) == (50, 25, 25, 6.0)
    assert (config.feature_layer, config.feature_t, config.extras.strength, config.extras.p2p_steps) == \
        ("up_blocks.0", 50, 0.5, 25)
    assert settings.negative == "source" and config.extras.mask_threshold is None
