"""The command lines' search and inference flags come from the dataclasses: one definition, the
same defaults everywhere."""

from dataclasses import fields

import pytest

from nmt.cli import evaluate, translate
from nmt.cli.options import options_from_args
from nmt.options import InferenceOptions, SearchOptions

COMMANDS = {
    "nmt-translate": (translate.parse_args, ["RUN"]),
    "nmt-evaluate": (evaluate.parse_args, ["RUN", "--split", "test"]),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_a_flag_with_the_dataclass_default(command, capsys):
    parse, required = COMMANDS[command]
    args = parse(required)
    assert options_from_args(SearchOptions, args) == SearchOptions()
    assert options_from_args(InferenceOptions, args) == InferenceOptions()
    with pytest.raises(SystemExit):
        parse(["--help"])
    usage = capsys.readouterr().out
    for options in (SearchOptions, InferenceOptions):
        for option in fields(options):
            if option.metadata.get("cli", True):
                flags = option.metadata.get("flags") or ("--" + option.name.replace("_", "-"),)
                assert all(flag in usage for flag in flags), (command, option.name)


def test_flags_reach_the_dataclasses():
    argv = ["RUN", "--beam", "4", "--nbest", "2", "--sample", "--top-p", "0.9", "--no-repeat-ngram", "3"]
    argv += ["--quantize", "int8", "--workers", "1", "--batch-tokens", "500", "--no-progress"]
    args = translate.parse_args(argv)
    search = options_from_args(SearchOptions, args)
    assert (search.beam_size, search.nbest, search.sample, search.top_p, search.no_repeat_ngram) == (4, 2, True, 0.9, 3)
    assert options_from_args(InferenceOptions, args) == InferenceOptions(quantize="int8", workers=1, batch_tokens=500)


def test_a_new_search_option_reaches_the_flags_and_the_service_without_another_edit():
    """The flags of nmt-translate and nmt-evaluate and the fields of a /translate request are
    generated from the dataclass: a field added to it is offered everywhere, with its default,
    help and choices, and comes back as the dataclass's value."""
    import argparse
    from dataclasses import make_dataclass

    from nmt.cli.options import add_option_flags
    from nmt.options import option
    from nmt.service.schemas import options_of, translate_request_model

    extended = make_dataclass(
        "ExtendedOptions",
        [("diversity", str, option("none", "how the beams differ", ("--diversity",), ("none", "groups")))],
        bases=(SearchOptions,),
    )
    parser = argparse.ArgumentParser()
    add_option_flags(parser, extended, "search")
    chosen = options_from_args(extended, parser.parse_args(["--diversity", "groups", "--beam", "3"]))
    assert (chosen.diversity, chosen.beam_size) == ("groups", 3)
    request_model = translate_request_model(extended)
    schema = request_model.model_json_schema()["properties"]
    assert schema["diversity"]["default"] == "none" and schema["diversity"]["enum"] == ["none", "groups"]
    request = request_model(segments=["a"], diversity="groups", beam=3)
    assert options_of(request, extended) == extended(beam_size=3, diversity="groups")
    assert options_of(request_model(segments=["a"]), extended) == extended()
