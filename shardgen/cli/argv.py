"""Check a command line against the CLI's method signatures before python-fire runs it.

Fire only notices an argument it cannot use *after* calling the command (``shardgen
build SRC OUT --sed 5`` builds with the default seed, then says ``Could not consume
arg: --sed``). :func:`check_argv` reads the argv the way fire does, against
``inspect.signature`` of the command's method, and either raises :class:`ArgvError`
(one line, exit 2, nothing done) or returns an equivalent argv that fire runs as is:
``[command, "--name='value'", ...]``, every value but a true/false flag's quoted, so that fire
passes the exact string typed (never ``['normal']`` as a list, ``1e3`` as a float, ``None`` as
None). No command needs code of its own here.

Rules (fire's, except where marked *):

* The first word is the command (a public method of the CLI class; ``-`` and ``_``
  are the same). ``shardgen``, ``shardgen --help`` and ``shardgen -- ...`` go to fire.
* ``--name value``, ``--name=value``, ``-name value``; ``-`` and ``_`` are the same in
  names (``--shard-size`` is ``--shard_size``); a one-letter flag (``-w 4``) names the one
  parameter that starts with that letter. A flag followed by another flag or by nothing
  is ``True``.
* A parameter without a default is a positional argument (``SRC``, ``OUT``), or may be
  given as a flag (``--src x``). *Parameters with a default are flags only: a further
  positional word is an error naming it, not a value for the next parameter.
* *A true/false flag (its default is a bool) followed by a word that is not a boolean
  (``true/false/yes/no/on/off/1/0``) is ``True`` and leaves the word as a positional
  argument, so ``--overwrite SRC OUT`` works. ``--noNAME``, ``--no-NAME`` and
  ``--no_NAME`` mean ``--NAME=False``, for true/false flags only, anywhere on the line.
* *A flag that needs a value (not true/false) must get one, and every positional
  argument must be given. A flag given twice keeps its last value.
* ``-h`` or ``--help`` anywhere shows the command's help (fire's).
* Words after the last lone ``--`` are fire's own flags (``--help``, ``--trace``,
  ``--verbose``, ``--interactive``, ``--completion``, ``--separator``), checked with
  fire's own parser. A lone ``-`` (fire's separator, which would run the command and
  apply the rest to its result) is an unexpected argument.

Unknown names get the closest valid one (``difflib.get_close_matches``), in the
spelling the user used (hyphens or underscores).
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UsageError

__all__ = ["ArgvError", "Command", "check_argv", "commands"]

#: values a true/false flag takes as its next word (as_bool in cli/values accepts the same)
BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})
HELP = ("-h", "--help")


class ArgvError(UsageError):
    """A bad command line; ``command`` is the command it is about (None: no command yet)."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass
class Command:
    """A CLI method's parameters, as the command line sees them."""

    name: str
    #: every parameter (without ``self``) in signature order
    params: dict[str, inspect.Parameter]
    #: parameters without a default, in order: the positional arguments
    positional: list[str] = field(default_factory=list)
    varargs: bool = False
    varkw: bool = False

    @classmethod
    def of(cls, name: str, fn: Callable) -> "Command":
        sig = inspect.signature(fn)  # follows functools.wraps to the real method
        params: dict[str, inspect.Parameter] = {}
        varargs = varkw = False
        for i, p in enumerate(sig.parameters.values()):
            if i == 0 and p.name == "self":
                continue
            if p.kind is p.VAR_POSITIONAL:
                varargs = True
            elif p.kind is p.VAR_KEYWORD:
                varkw = True
            elif p.kind is not p.POSITIONAL_ONLY:
                params[p.name] = p
        positional = [n for n, p in params.items()
                      if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
        return cls(name, params, positional, varargs, varkw)

    def is_bool(self, name: str) -> bool:
        return isinstance(self.params[name].default, bool)


def commands(cli: type) -> dict[str, Callable]:
    """The commands of a CLI class: its public methods, by name."""
    return {n: f for n, f in inspect.getmembers(cli, inspect.isfunction) if not n.startswith("_")}


def _is_flag(tok: str) -> bool:
    """Fire's test: ``--x`` or ``-x...``; ``-5`` (a negative number) and ``-`` are not flags."""
    return tok.startswith("--") or re.match(r"^-[a-zA-Z]", tok) is not None


def _suggest(word: str, options: list[str], typed: str, dash: str = "") -> str:
    """`` (did you mean --x?)``, or ``; valid: ...`` when nothing is close.

    ``word`` and ``options`` are bare names; they are shown with ``dash`` in front and in
    the user's spelling (hyphens if ``typed`` used hyphens and no underscores).
    """
    hyphen = "-" in typed.lstrip("-") and "_" not in typed

    def show(o: str) -> str:
        return dash + (o.replace("_", "-") if hyphen else o)

    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f" (did you mean {show(close[0])}?)"
    return f"; valid: {', '.join(show(o) for o in options)}" if options else ""


def _fire_flags(flag_args: list[str], command: str | None) -> Any:
    """Parse the words after the last ``--`` with fire's own parser; unknown ones are errors."""
    from fire import parser as fire_parser

    parsed, unknown = fire_parser.CreateParser().parse_known_args(flag_args)
    if unknown:
        opts = ["--help", "--trace", "--verbose", "--interactive", "--completion", "--separator"]
        raise ArgvError(f"unknown flag {unknown[0]} after -- (fire's own flags: {', '.join(opts)}; "
                        f"put command flags before the --)", command)
    return parsed


def check_argv(cli: type, argv: list[str]) -> list[str]:
    """Validate ``argv`` (without the program name) for ``cli``; return the argv for fire.

    Raises:
        ArgvError: unknown command or flag, a flag without its value,
            a missing or extra positional argument.
    """
    argv = list(argv)
    flag_args: list[str] = []
    if "--" in argv:
        cut = len(argv) - 1 - argv[::-1].index("--")
        argv, flag_args = argv[:cut], argv[cut + 1:]
    cmds = commands(cli)
    if not argv or argv[0] in HELP:
        _fire_flags(flag_args, None)
        return argv + (["--", *flag_args] if flag_args else [])
    first = argv[0]
    if _is_flag(first):
        raise ArgvError(f"expected a command before {first}; commands: {', '.join(cmds)}")
    name = first if first in cmds else first.replace("-", "_")
    if name not in cmds:
        raise ArgvError(f"unknown command {first}{_suggest(name, list(cmds), first)}")
    fire_flags = _fire_flags(flag_args, name)
    if fire_flags.help or any(t in HELP for t in argv[1:]):
        return [name, "--", "--help"]
    cmd = Command.of(name, cmds[name])
    values, extra = _parse(cmd, argv[1:], fire_flags.separator)
    order = [k for k in cmd.params if k in values] + [k for k in values if k not in cmd.params]  # signature order
    out = [name] + [f"--{k}={_literal(cmd, k, values[k])}" for k in order] + [repr(w) for w in extra]
    return out + (["--", *flag_args] if flag_args else [])


def _literal(cmd: Command, name: str, value: str) -> str:
    """``value`` as fire must see it to hand the command the string the user typed: fire parses
    a bare value as a Python literal (``['normal']`` -> a list, ``1e3`` -> 1000.0, ``None``,
    ``a,b`` -> a tuple), a quoted one is the string itself. True/false flags stay bare (their
    word, or ``True``/``False``); the commands read every other value from its string."""
    return value if name in cmd.params and cmd.is_bool(name) else repr(value)


def _parse(cmd: Command, toks: list[str], separator: str) -> tuple[dict[str, str], list[str]]:
    """Flags and positional words of one command -> ``{param: value}`` (strings, as typed)."""
    values: dict[str, str] = {}
    words: list[str] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        i += 1
        if tok == separator:
            raise ArgvError(f"unexpected argument {tok}", cmd.name)
        if not _is_flag(tok):
            words.append(tok)
            continue
        key, eq, val = tok.lstrip("-").partition("=")
        pname, value = _flag(cmd, tok, key.replace("-", "_"), val if eq else None)
        if value is None:  # takes the next word, unless it is a flag or a true/false flag's non-boolean
            nxt = toks[i] if i < len(toks) else None
            if pname in cmd.params and cmd.is_bool(pname):
                if nxt is not None and not _is_flag(nxt) and nxt.lower() in BOOL_WORDS:
                    value, i = nxt, i + 1
                else:
                    value = "True"
            elif nxt is None or _is_flag(nxt) or nxt == separator:
                raise ArgvError(f"flag {tok} needs a value (write {tok}=VALUE if it starts with -)", cmd.name)
            else:
                value, i = nxt, i + 1
        values.pop(pname, None)  # given again: the last one wins, as in fire and argparse
        values[pname] = value
    return _positional(cmd, values, words), (words if cmd.varargs else [])


def _flag(cmd: Command, tok: str, key: str, value: str | None) -> tuple[str, str | None]:
    """Resolve one flag to its parameter; ``value`` None means it is still to be read."""
    if key in cmd.params:
        return key, value
    if len(key) == 1:
        hits = [p for p in cmd.params if p.startswith(key)]
        if len(hits) == 1:
            return hits[0], value
        if hits:
            raise ArgvError(f"flag {tok} is ambiguous: {', '.join('--' + h for h in hits)}", cmd.name)
    neg = key[2:].lstrip("_") if key.startswith("no") else ""
    if neg in cmd.params and cmd.is_bool(neg):
        if value is not None:
            raise ArgvError(f"flag {tok} takes no value (write --{neg}={value} instead)", cmd.name)
        return neg, "False"
    if neg in cmd.params:
        raise ArgvError(f"flag {tok}: only true/false flags can be negated, and --{neg} is not one", cmd.name)
    if cmd.varkw:
        return key, value
    no = "no_" if key.startswith("no_") else "no"
    negations = [no + p for p in cmd.params if cmd.is_bool(p)]
    bare = tok.split("=", 1)[0]
    hint = _suggest(key, list(cmd.params) + negations, bare, "--")
    if not hint.startswith(" ("):  # nothing close: list the flags, not their negations
        hint = _suggest(key, list(cmd.params), bare, "--")
    raise ArgvError(f"unknown flag {bare}{hint}", cmd.name)


def _positional(cmd: Command, values: dict[str, str], words: list[str]) -> dict[str, str]:
    """Give the positional words to the positional parameters not already set by a flag."""
    open_slots = [p for p in cmd.positional if p not in values]
    for slot, word in zip(open_slots, words):
        values[slot] = word
    missing = open_slots[len(words):]
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise ArgvError(f"missing argument{s} {' '.join(m.upper() for m in missing)} "
                        f"(see shardgen {cmd.name} --help)", cmd.name)
    kwonly = [n for n, p in cmd.params.items() if p.default is p.empty and p.kind is p.KEYWORD_ONLY]
    for n in kwonly:
        if n not in values:
            raise ArgvError(f"missing flag --{n}", cmd.name)
    extra = words[len(open_slots):]
    if extra and not cmd.varargs:
        takes = " ".join(p.upper() for p in cmd.positional) or "no arguments"
        raise ArgvError(f"unexpected argument {extra[0]} (shardgen {cmd.name} takes {takes}; "
                        f"other values go with a --flag)", cmd.name)
    if cmd.varargs:
        del words[:len(open_slots)]
    return values
