"""Conventions every command shares: global options anywhere, one-line errors, help in human words."""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer._click import Command
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperArgument, TyperGroup, TyperOption

from pacsflow.status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

log = logging.getLogger("pacsflow")

#: global options (`pacsflow -q upload ...`) that are also taken after the command (`upload ... -q`)
GLOBAL_FLAGS = frozenset({"-q", "--quiet", "-v", "--verbose", "--log-phi"})
GLOBAL_WITH_VALUE = frozenset({"-c", "--config", "--ledger"})

#: what an option's value is, in the words of its help line (`--to SERVER`, not `--to <str>`);
#: "command:--option" entries win over "--option" ones
METAVARS = {
    "--to": "SERVER",
    "--from": "SERVER",
    "forward:--to": "SERVER|NODE",
    "transfer:--to": "SERVER|NODE",
    "retrieve:--from": "NODE",
    "retrieve:--to": "DIR|SERVER",
    "retrieve:--patients": "FILE",
    "retrieve:--select": "MODULE:FUNCTION",
    "retrieve:--method": "move|get",
    "retrieve:--aet": "AET",
    "retrieve:--port": "PORT",
    "retrieve:--rate": "N/min",
    "migrate:--from": "NODE",
    "migrate:--via": "orthanc|dicom",
    "migrate:--aet": "AET",
    "migrate:--rate": "N/min",
    "--out": "DIR",
    "compare:--out": "FILE.csv",
    "--zip": "FILE.zip",
    "--per-patient-zip": "DIR",
    "--config": "FILE",
    "--ledger": "URL",
    "--credentials": "URL",
    "--workers": "N",
    "--limit": "N",
    "--batch-size": "N",
    "--patients": "N",
    "--studies": "N",
    "--series": "N",
    "--instances": "N",
    "--pixels": "N",
    "--seed": "N",
    "--query": "TAG=VALUE",
    "--where": "COLUMN=VALUE",
    "--give-up-after": "DURATION",
    "--window": "WHEN",
    "--poll": "SECONDS",
    "--roster": "FILE.csv",
    "--root": "DIR",
    "--errors": "FILE.csv",
    "--csv": "FILE.csv",
    "--csv-key": "COLUMN",
    "--id-column": "COLUMN",
    "--status-column": "COLUMN",
    "--label": "LABEL",
    "--on": "SERVER",
    "--option": "OPTION",
    "--pseudonym": "FORMAT",
    "--format": "FORMAT",
    "--study": "ID|UID",
    "--accession": "NUMBER",
    "--patient": "PATIENT_ID",
    "--via": "rest|peer|dicom",
    "--peer": "NAME",
    "--modality": "NAME",
    "--trigger": "stable-study|new-instance",
    "--level": "study|series|instance",
    "--from-date": "DATE",
    "--to-date": "DATE",
}
_BY_TYPE = {int: "N", float: "NUMBER", str: "TEXT"}
_SHORT_FLAGS = re.compile(r"-[qv]{2,}")
_SHORT_WITH_VALUE = re.compile(r"-c.+")
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """ARGS with global options given after the command moved before it, so that
    `pacsflow upload data --to main -q` means `pacsflow -q upload data --to main`. Nothing after `--`
    moves, nor an option's own value."""
    hoisted: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        name = arg.split("=", 1)[0]
        if arg == "--":
            rest.extend(args[index:])
            break
        if (
            arg in GLOBAL_FLAGS
            or (name in GLOBAL_WITH_VALUE and "=" in arg)
            or _SHORT_FLAGS.fullmatch(arg)  # -qv
            or _SHORT_WITH_VALUE.fullmatch(arg)  # -c/path/pacsflow.toml
        ):
            hoisted.append(arg)
        elif arg in GLOBAL_WITH_VALUE and index + 1 < len(args):
            hoisted.extend(args[index : index + 2])
            index += 1
        else:
            rest.append(arg)
        index += 1
    return hoisted + rest


def humanize(command: Command) -> None:
    """Help in the user's words: a metavar for each option's value (SERVER, N, DURATION) instead of
    Python types, argument names without `<list[Path]>`, and each `Example:` line kept as written."""
    name = command.name or ""
    for param in command.params:
        if isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
            longest = max(param.opts, key=len)
            param.metavar = METAVARS.get(f"{name}:{longest}") or METAVARS.get(longest) or _by_type(param)
        elif isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "value").upper()
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    if command.help:
        command.help = _keep_examples(command.help)
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            humanize(sub)


def _by_type(param: TyperOption) -> str:
    described = param.type_descriptor
    if described.is_choice:
        return "|".join(str(choice) for choice in described.choices or ())
    if described.is_path:
        return "PATH"
    return _BY_TYPE.get(described.annotation, "VALUE")


def _keep_examples(text: str) -> str:
    """Click rewraps paragraphs; `\\b` before the examples keeps one per line, as written."""
    paragraphs = text.split("\n\n")
    kept = [
        f"\b\n{part}" if part.lstrip().startswith("Example") and "\b" not in part else part
        for part in paragraphs
    ]
    return "\n\n".join(kept)


def say_error(text: str) -> None:
    typer.echo(f"pacsflow: error: {text}", err=True)


def _usage_text(exc: UsageError) -> str:
    message = exc.format_message()
    ctx = exc.ctx
    if ctx is None:
        return message
    command = ctx.command_path
    return f"{message} (see `{command} --help`)"


def unexpected(exc: BaseException, *, verbose: bool, log_phi: bool) -> str:
    """One line for an error pacsflow did not foresee: its kind and where, and with --log-phi or -v its
    message (which may hold a path or an ID); never a URL's password."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    ours = [frame for frame in frames if "/pacsflow/" in frame.filename or "/tests/" in frame.filename]
    frame = (ours or frames or [None])[-1]
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    text = f"unexpected {type(exc).__name__}{where}"
    if verbose or log_phi:
        text += f": {_URL_CREDENTIALS.sub('***@', str(exc))}"
    return f"{text}; this is a bug in pacsflow: please report it with the output of the same command and -v"


class PacsflowGroup(TyperGroup):
    """The root command: hoists global options, and turns every error into one `pacsflow: error:` line
    (usage errors included: one style for all), with no traceback unless -v."""

    _humanized = False

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = hoist_global_options(args)
        return super().parse_args(ctx, args)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not self._humanized:
            humanize(self)
            self._humanized = True
        arguments = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(arguments, "pacsflow", complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            code = EXIT_USAGE
        except UsageError as exc:
            say_error(_usage_text(exc))
            code = EXIT_USAGE
        except typer.Abort:
            say_error("aborted")
            code = EXIT_INTERRUPTED
        except ClickException as exc:
            say_error(exc.format_message())
            code = exc.exit_code
        except Exception as exc:  # the last line of defence: no traceback reaches a user
            verbose = any(arg in ("-v", "--verbose") for arg in arguments)
            log_phi = "--log-phi" in arguments
            if verbose:
                traceback.print_exception(exc, file=sys.stderr)
            say_error(unexpected(exc, verbose=verbose, log_phi=log_phi))
            code = EXIT_FAILED
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code
