"""Flags generated from typed dataclasses (pipelines/core/flags.py) for every command line:
--help shows each field's default, the spellings of earlier releases still parse, and a bad
or mistyped flag is one line with a suggestion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from manifests.__main__ import main as manifests_main
from manifests.flags import BuildFlags, FolderFlags, InfoFlags, VocabFlags
from pipelines.beam.perturb_cli import PerturbFlags
from pipelines.beam.prepare_flags import PrepareFlags
from pipelines.core.errors import OneLineParser
from pipelines.core.flags import add_flags, flag_name, from_args, setting, settings_line
from tagtrain.run.config import RunConfig

FLAG_CLASSES = (PrepareFlags, PerturbFlags, BuildFlags, FolderFlags, VocabFlags, InfoFlags)


def parser_for(cls, with_defaults=True) -> OneLineParser:
    parser = OneLineParser(prog="cmd")
    add_flags(parser, cls, with_defaults=with_defaults)
    return parser


@pytest.mark.parametrize("cls", [*FLAG_CLASSES, RunConfig], ids=lambda c: c.__name__)
def test_help_shows_every_default_from_the_fields(cls):
    text = " ".join(parser_for(cls).format_help().split())
    shown = 0
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.metadata.get("no_flag") or default in ("", None, {}) or default is False:
            continue
        value = f"{default:g}" if isinstance(default, float) else str(default)
        if isinstance(default, list):
            value = " ".join(map(str, default))
        assert f"(default: {value})" in text, (f.name, text)
        shown += 1
    assert shown >= 1


def test_the_spellings_of_earlier_releases_still_parse():
    prepare = parser_for(PrepareFlags).parse_args(["--manifest", "m", "--output", "o", "--update"])
    assert (prepare.out, prepare.update, prepare.force, prepare.n_mels) == ("o", True, False, 128)
    assert parser_for(PerturbFlags).parse_args(["--dataset", "d"]).data == "d"
    build = parser_for(BuildFlags).parse_args(
        ["mtat", "--audio-root", "a", "--out", "o.parquet", "--labels", "l.tsv"]
    )
    assert (build.dataset, build.train_labels, build.split_variant) == (
        "mtat", Path("l.tsv"), "clean"
    )  # fmt: skip
    assert (
        parser_for(FolderFlags)
        .parse_args(["--root", "r", "--out", "o", "--no-durations"])
        .no_durations
    )
    # The trainer's flags stay None unless given (a config file or a saved run fills them).
    run = parser_for(RunConfig, with_defaults=False).parse_args(["--no-progress"])
    assert run.progress is False and run.batch_size is None
    with_defaults = parser_for(RunConfig)
    assert with_defaults.parse_args([]).progress is True
    usage = with_defaults.format_help()
    progress = usage[usage.index("  --progress") :]
    progress = progress[: progress.index("\n  --", 1)]
    assert progress.count("(default: True)") == 1  # shown once, not twice


@pytest.mark.parametrize(
    "cls, argv, needle",
    [
        (PrepareFlags, ["--manifest", "m", "--shard-size-mb", "0"], "--shard-size-mb"),
        (PrepareFlags, ["--manifest", "m", "--max-reject-fraction", "2"], "within 0..1"),
        (PrepareFlags, ["--manifest", "m", "--decoder", "mpg"], "invalid choice"),
        (PrepareFlags, [], "required: --manifest"),
        (PerturbFlags, ["--seed", "one"], "--seed"),
        (BuildFlags, ["nosuchset", "--audio-root", "a", "--out", "o"], "invalid choice"),
    ],
)
def test_a_bad_value_is_one_line(cls, argv, needle):
    with pytest.raises(SystemExit) as exit_:
        parser_for(cls).parse_args(argv)
    assert isinstance(exit_.value.code, str) and "\n" not in exit_.value.code
    assert needle in exit_.value.code


def test_a_mistyped_manifests_flag_is_one_line_with_a_suggestion(tmp_path, capsys):
    assert manifests_main(["vocab", str(tmp_path / "m.parquet"), "--tpo", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tpo" in err and "did you mean --top?" in err


def test_settings_print_as_a_diff_from_the_defaults():
    args = parser_for(PrepareFlags).parse_args(["--manifest", "m.parquet", "--n-mels", "96"])
    assert settings_line(from_args(args, PrepareFlags)) == "manifest=m.parquet n_mels=96"
    assert settings_line(from_args(parser_for(VocabFlags).parse_args(["m"]), VocabFlags)) == (
        "manifest=m"
    )
    assert settings_line(InfoFlags()) == "defaults"
    assert flag_name("max_reject_fraction") == "--max-reject-fraction"


@dataclasses.dataclass
class _FilesFlags:
    paths: list[str] = setting([], "audio files", positional=True, metavar="FILE")
    extra: list[str] = setting([], "more files", nargs="*")
    tag: list[str] = setting([], "a tag (repeatable)", repeat=True)
    source: str = setting("", "whose checkpoint", option="--from", choices=("a", "b"))
    count: int = setting(3, "how many")


def test_positional_lists_repeated_flags_and_other_spellings():
    """A `list[str]` positional takes one or more values (`nargs` another count), a
    `repeat` flag appends each time it is given, `option` spells a flag that cannot be its
    field's name; `from_args` makes the dataclass of them, `--help` shows the defaults."""
    parser = parser_for(_FilesFlags)
    args = parser.parse_args(["a.wav", "b.wav", "--tag", "x", "--from", "b", "--tag", "y"])
    flags = from_args(args, _FilesFlags)
    assert flags == _FilesFlags(["a.wav", "b.wav"], [], ["x", "y"], "b", 3)
    assert from_args(parser.parse_args(["a.wav", "--extra"]), _FilesFlags).tag == []
    assert parser.parse_args(["a.wav", "--extra", "c", "d"]).extra == ["c", "d"]
    assert _FilesFlags().tag == [] and from_args(parser.parse_args(["a"]), _FilesFlags).tag == []
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a FILE is required
    with pytest.raises(SystemExit):
        parser.parse_args(["a.wav", "--source", "a"])  # spelt --from only
    text = " ".join(parser.format_help().split())
    assert "--from {a,b}" in text and "(default: 3)" in text and "FILE [FILE ...]" in text
    assert "(default: none)" not in text  # an empty list shows no default


def _command_options():
    from tagtrain.commands.evaluate import EvaluateCommandFlags
    from tagtrain.inference.contributions import ExplainOptions
    from tagtrain.pretrained.cli import EmbedFlags, ExportFlags, TagFlags
    from tagtrain.pretrained.imported_run import ImportOptions

    return {
        "tag": TagFlags, "embed": EmbedFlags, "evaluate": EvaluateCommandFlags,
        "export": ExportFlags, "explain": ExplainOptions, "import-weights": ImportOptions,
    }  # fmt: skip


@pytest.mark.parametrize("command", list(_command_options()))
def test_the_inference_commands_flags_are_their_options_fields(command):
    """tag, embed, evaluate, export, explain and import-weights: every flag is a field of
    the command's one options dataclass (no hand-written argument), with its default."""
    import importlib
    import inspect

    from tagtrain.__main__ import build_parser

    cls = _command_options()[command]
    parser = build_parser().commands[command]
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == {f.name for f in dataclasses.fields(cls) if "help" in f.metadata}
    module = importlib.import_module(f"tagtrain.commands.{command.replace('-', '_')}")
    assert "add_argument(" not in inspect.getsource(module)
    text = " ".join(parser.format_help().split())
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if "help" in f.metadata and default not in ("", None, [], False):
            assert f"(default: {default})" in text, (f.name, text)
