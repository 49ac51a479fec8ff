import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

from nmt.config import Config, TrainConfig, register_configs, to_config
from nmt.options import ConfigError, SearchOptions


def compose_config(*overrides: str) -> Config:
    """The config nmt-train composes, from the package's configs as an installed nmt finds them."""
    register_configs()
    with initialize_config_module(config_module="nmt.conf", version_base=None):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def test_defaults_compose_into_typed_config():
    config = compose_config("data.source=/tmp/corpus")
    assert config.data.source == "/tmp/corpus"
    assert (config.data.src_lang, config.data.tgt_lang) == ("de", "en")
    assert config.model.attention == "bahdanau"
    assert config.model.encoder.bidirectional is True


def test_source_comes_from_nmt_data_unless_given(monkeypatch):
    monkeypatch.setenv("NMT_DATA", "/data/multi30k")
    assert compose_config().data.source == "/data/multi30k"
    assert compose_config("data.source=/elsewhere").data.source == "/elsewhere"
    monkeypatch.delenv("NMT_DATA")
    assert compose_config().data.source == "bentrevett/multi30k"


@pytest.mark.parametrize("pair", ["de_en", "en_de", "fr_en", "cs_en"])
def test_one_multi30k_config_per_language_pair(pair):
    config = compose_config(f"data=multi30k_{pair}")
    assert f"{config.data.src_lang}_{config.data.tgt_lang}" == pair


@pytest.mark.parametrize("preset", ["smoke", "quick", "default"])
def test_presets_compose(preset):
    config = compose_config(f"train={preset}")
    assert config.train.max_epochs or config.train.max_steps or config.train.max_minutes


@pytest.mark.parametrize("pair", ["de_en", "en_de", "fr_en", "cs_en"])
def test_recipes_train_their_pair_to_a_step_budget(pair):
    """A recipe's budget is in updates, so a slower or busier machine trains the same model."""
    config = compose_config(f"experiment=multi30k_{pair}")
    assert config.data.name == f"multi30k_{pair}"
    assert f"{config.data.src_lang}_{config.data.tgt_lang}" == pair
    assert (config.model.name, config.train.batching) == ("reference", "source")
    assert (config.model.encoder.cell, config.model.decoder.cell) == ("gru", "gru")
    assert (config.train.max_steps, config.train.max_minutes, config.train.max_epochs) == (3600, 0, 0)
    assert config.train.lr_anneal == 0.4 and config.train.lr_decay_factor == 1.0
    assert config.train.keep_checkpoints == 5


@pytest.mark.parametrize("cell", ["lstm", "peephole", "cifg", "gru", "rnn"])
def test_the_cell_group_sets_both_sides(cell):
    config = compose_config(f"cell={cell}", "train=quick", "model.attention=none")
    assert (config.model.encoder.cell, config.model.decoder.cell) == (cell, cell)
    assert config.model.attention == "none"


def test_a_recipe_takes_overrides_on_top():
    config = compose_config("experiment=multi30k_en_de", "train.max_steps=10", "model.dropout=0.1", "cell=lstm")
    assert (config.train.max_steps, config.model.dropout, config.data.tgt_lang) == (10, 0.1, "de")
    assert (config.model.encoder.cell, config.model.decoder.cell) == ("lstm", "lstm")


def test_quick_preset_is_smaller_than_the_default_model():
    quick, default = compose_config("train=quick"), compose_config()
    assert quick.model.encoder.num_layers < default.model.encoder.num_layers
    assert quick.train.max_minutes > 0


def test_presets_set_sizes_without_overriding_the_model_kind():
    config = compose_config("model=lstm", "train=quick")
    assert config.model.attention == "none" and config.model.decoder.num_layers == 1


def test_unknown_key_fails_at_start():
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException), match="lr_rate"):
        compose_config("train.lr_rate=0.1")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.attention=luong", "model.attention='luong' is not valid; choose one of: none, bahdanau"),
        ("train.device=tpu", "train.device='tpu' is not valid"),
        ("model.dropout=1.5", r"model.dropout=1.5 must be in \[0, 1\)"),
        ("model.source_word_dropout=1.0", r"model.source_word_dropout=1.0 must be in \[0, 1\)"),
        ("data.tgt_lang=de", "both 'de'"),
        ("data.tokenizer.sampling_alpha=-0.1", r"data.tokenizer.sampling_alpha=-0.1 must be >= 0"),
        ("data.tokenizer.kind=bpe data.tokenizer.sampling_alpha=0.5", "segmentations of a unigram model"),
        ("data.tokenizer.sampling_nbest=1", "sampling_nbest=1 must be >= 2"),
        ("model.decoder.hidden_size=256 model.attention=luong_dot", r"encoder output size \(512\) to equal .* \(256\)"),
    ],
)
def test_bad_values_are_reported_with_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(*override.split())


def test_wrong_type_is_a_config_error():
    with pytest.raises((ConfigError, ConfigCompositionException, OmegaConfBaseException), match="batch_tokens"):
        compose_config("train.batch_tokens=many")


def test_config_survives_a_round_trip_through_a_plain_dict():
    config = compose_config("train=quick")
    assert Config.from_dict(config.to_dict()) == config


def test_the_peers_preset_is_the_peers_recipe():
    """The preset holds only what it changes: the recipe it stands for must not move with a default."""
    config = compose_config("model=reference", "train=peers")
    model, train = config.model, config.train
    assert (model.embed_dim, model.encoder.hidden_size, model.encoder.num_layers, model.encoder.bidirectional) == (
        256,
        256,
        2,
        True,
    )
    assert (model.decoder.hidden_size, model.decoder.num_layers, model.attention, model.input_feeding) == (
        512,
        2,
        "bahdanau",
        True,
    )
    assert (model.dropout, model.init, model.init_range, model.forget_bias) == (0.3, "uniform", 0.1, None)
    assert (train.lr, train.lr_decay_factor, train.clip_norm, train.precision) == (0.001, 1.0, 1.0, "fp32")
    assert (train.batching, train.batch_tokens, train.max_minutes, train.validate_every) == ("source", 2270, 24.2, 200)


def test_validation_search_is_greedy_and_configurable():
    assert compose_config().train.valid_search == SearchOptions(beam_size=1)
    config = compose_config("train.valid_search.beam_size=4", "train.valid_search.length_penalty=gnmt")
    assert (config.train.valid_search.beam_size, config.train.valid_search.length_penalty) == (4, "gnmt")
    with pytest.raises(ConfigError, match="nbest=5 must be between 1 and the beam size"):
        compose_config("train.valid_search.nbest=5")


def test_a_config_saved_before_validation_had_its_search_options_still_loads():
    """Checkpoints carry their config as a dict; older ones held the validation search as
    train.valid_beam, train.max_len_a and train.max_len_b."""
    values = Config().to_dict()
    del values["train"]["valid_search"]
    values["train"].update(valid_beam=3, max_len_a=2.0, max_len_b=5)
    loaded = Config.from_dict(values)
    assert loaded.train.valid_search == SearchOptions(beam_size=3, max_len_a=2.0, max_len_b=5)
    assert loaded.train == TrainConfig(valid_search=SearchOptions(beam_size=3, max_len_a=2.0, max_len_b=5))
